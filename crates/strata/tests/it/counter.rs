//! A small aggregate and view for exercising the core: a counter that can be opened,
//! incremented and closed.

use serde::{Deserialize, Serialize};
use strata::event::{decode_payload, unknown_type};
use strata::{
    Aggregate, ApplyError, Decision, DecodeError, DomainEvent, Envelope, RecordedEvent, View,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterEvent {
    Opened { owner: String },
    Incremented { by: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CounterEvent::Opened { .. } => "Opened",
            CounterEvent::Incremented { .. } => "Incremented",
        }
    }
    fn encode(&self, codec: strata::Codec) -> Result<Vec<u8>, strata::CodecError> {
        match self {
            CounterEvent::Opened { owner } => codec.encode(owner),
            CounterEvent::Incremented { by } => codec.encode(by),
        }
    }
    fn decode(record: &RecordedEvent) -> Result<Self, DecodeError> {
        match record.event_type.as_str() {
            "Opened" => Ok(CounterEvent::Opened { owner: decode_payload(record)? }),
            "Incremented" => Ok(CounterEvent::Incremented { by: decode_payload(record)? }),
            _ => Err(unknown_type(record)),
        }
    }
}

#[derive(Debug, Clone)]
pub enum CounterCommand {
    Open {
        owner: String,
    },
    /// Increments by each amount in turn; refused as a whole if any would pass the limit.
    Increment {
        amounts: Vec<u64>,
    },
    /// Adds one if the value is odd; does nothing if it is even.
    MakeEven,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("not open")]
    NotOpen,
    #[error("already open")]
    AlreadyOpen,
    #[error("over the limit")]
    OverLimit,
}

pub const LIMIT: u64 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub open: bool,
    pub value: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Opened { .. } => self.open = true,
            CounterEvent::Incremented { by } => self.value += by,
        }
    }

    fn handle(d: &mut Decision<'_, Self>, command: CounterCommand) -> Result<(), CounterError> {
        match command {
            CounterCommand::Open { owner } => {
                if d.open {
                    return Err(CounterError::AlreadyOpen);
                }
                d.emit(CounterEvent::Opened { owner });
            }
            CounterCommand::Increment { amounts } => {
                if !d.open {
                    return Err(CounterError::NotOpen);
                }
                for by in amounts {
                    // Each emit is applied at once, so the check sees earlier increments.
                    if d.value + by > LIMIT {
                        return Err(CounterError::OverLimit);
                    }
                    d.emit(CounterEvent::Incremented { by });
                }
            }
            CounterCommand::MakeEven => {
                if d.value % 2 == 1 {
                    d.emit(CounterEvent::Incremented { by: 1 });
                }
            }
        }
        Ok(())
    }
}

/// Per-owner totals across all counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerTotal {
    pub counters: Vec<String>,
    pub total: u64,
    pub events: u64,
}

impl View<CounterEvent> for OwnerTotal {
    fn apply(&mut self, event: &Envelope<CounterEvent>) -> Result<(), ApplyError> {
        self.events += 1;
        match &event.event {
            CounterEvent::Opened { .. } => self.counters.push(event.stream.id.clone()),
            CounterEvent::Incremented { by } => self.total += by,
        }
        Ok(())
    }
}

/// Every counter event touches the view of the counter's owner, which is encoded in the
/// counter id as `owner.name` so that the locator needs no state.
pub fn locate_owner(event: &Envelope<CounterEvent>, ids: &mut Vec<String>) {
    if let Some((owner, _)) = event.stream.id.split_once('.') {
        ids.push(owner.to_owned());
    }
}

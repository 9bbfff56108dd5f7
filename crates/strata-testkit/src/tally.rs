//! A small domain for the projection contract: tally streams whose events add amounts, and
//! a [`Tally`] view per stream that also keeps two tables. An event can be made to fail
//! ("poisoned" with a token) until the test declares the token fixed, as a deployed fix
//! would, and an event can be stored that does not decode at all.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use strata::table::{Column, ColumnType, TableKind, TableRows, TableSpec, Value};
use strata::{
    ApplyError, DecodeError, DomainEvent, Envelope, EventMetadata, NewEvent, RecordedEvent, View,
};

/// The aggregate type of tally streams.
pub const TALLY: &str = "tally";

/// One row per tally: its id, total and number of events.
pub static TALLY_ROWS: TableSpec = TableSpec {
    name: "tally_rows",
    columns: &[
        Column::new("id", ColumnType::Text),
        Column::new("total", ColumnType::Integer),
        Column::new("events", ColumnType::Integer),
    ],
    key_columns: 1,
    indexes: &[&["total"]],
    kind: TableKind::Rows,
};

/// The sum of all tallies and how many contribute.
pub static TALLY_SUMS: TableSpec = TableSpec {
    name: "tally_sums",
    columns: &[
        Column::new("bucket", ColumnType::Text),
        Column::new("total", ColumnType::Integer),
        Column::new("tallies", ColumnType::Integer),
    ],
    key_columns: 1,
    indexes: &[],
    kind: TableKind::Sums,
};

/// Both tally tables.
pub static TALLY_TABLES: [&TableSpec; 2] = [&TALLY_ROWS, &TALLY_SUMS];

/// An amount added to a tally; `poison` names a token that makes the view refuse it until
/// the token is [`fix`]ed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The amount.
    pub amount: i64,
    /// A token that makes the view refuse the event until fixed.
    pub poison: Option<String>,
}

/// The events of a tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TallyEvent {
    /// See [`Added`].
    Added(Added),
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }

    fn encode(&self, codec: strata::Codec) -> Result<Vec<u8>, strata::CodecError> {
        match self {
            TallyEvent::Added(added) => codec.encode(added),
        }
    }

    fn decode(record: &RecordedEvent) -> Result<Self, DecodeError> {
        match record.event_type.as_str() {
            "Added" => strata::event::decode_payload(record).map(TallyEvent::Added),
            _ => Err(strata::event::unknown_type(record)),
        }
    }
}

fn fixed() -> MutexGuard<'static, HashSet<String>> {
    static FIXED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);
    FIXED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes the view accept events poisoned with `token` from now on.
pub fn fix(token: &str) {
    fixed().insert(token.to_owned());
}

/// Makes the view refuse events poisoned with `token` again (a regression).
pub fn break_again(token: &str) {
    fixed().remove(token);
}

/// An event adding `amount`.
pub fn added(amount: i64) -> NewEvent {
    event(&Added { amount, poison: None })
}

/// An event adding `amount` that the view refuses until `token` is fixed.
pub fn poisoned(amount: i64, token: &str) -> NewEvent {
    event(&Added { amount, poison: Some(token.to_owned()) })
}

/// An `Added` event whose payload is not JSON: it never decodes.
pub fn undecodable() -> NewEvent {
    NewEvent {
        event_type: "Added".to_owned(),
        schema_version: 1,
        payload: b"\x00 not json".to_vec(),
        metadata: EventMetadata::new("tally-contract", None),
    }
}

fn event(added: &Added) -> NewEvent {
    TallyEvent::Added(added.clone())
        .to_new_event(EventMetadata::new("tally-contract", None))
        .expect("a tally event encodes")
}

/// The state of one tally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The sum of the amounts applied.
    pub total: i64,
    /// How many events were applied.
    pub events: u64,
}

impl View<TallyEvent> for Tally {
    fn apply(&mut self, event: &Envelope<TallyEvent>) -> Result<(), ApplyError> {
        let TallyEvent::Added(added) = &event.event;
        if let Some(token) = &added.poison
            && !fixed().contains(token)
        {
            return Err(ApplyError::new(format!("poisoned with {token}")));
        }
        self.total += added.amount;
        self.events += 1;
        Ok(())
    }

    fn rows(&self, id: &str, rows: &mut TableRows) {
        rows.push(
            TALLY_ROWS.name,
            vec![
                Value::Text(id.to_owned()),
                Value::Integer(self.total),
                Value::Integer(self.events as i64),
            ],
        );
        rows.push(
            TALLY_SUMS.name,
            vec![Value::Text("all".to_owned()), Value::Integer(self.total), Value::Integer(1)],
        );
    }
}

/// Every tally event touches the tally of its stream.
pub fn locate(event: &Envelope<TallyEvent>, ids: &mut Vec<String>) {
    ids.push(event.stream.id.clone());
}

/// The same, from the stored event alone, for events that do not decode.
pub fn locate_raw(event: &RecordedEvent, ids: &mut Vec<String>) {
    if event.stream.aggregate_type == TALLY {
        ids.push(event.stream.id.clone());
    }
}

/// The locator of tally projections.
pub type TallyLocator = fn(&Envelope<TallyEvent>, &mut Vec<String>);

/// A projection of tallies.
pub type TallyProjection = strata::Projection<TallyEvent, Tally, TallyLocator>;

/// A projection of tallies called `name`, with both tables when `tables` is set.
pub fn projection(name: &'static str, tables: bool) -> TallyProjection {
    let projection = strata::Projection::new(name, locate as TallyLocator)
        .with_raw_locator(locate_raw)
        .with_batch_size(7);
    if tables { projection.with_tables(&TALLY_TABLES) } else { projection }
}

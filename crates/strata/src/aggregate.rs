//! Aggregates decide with emit/apply: a command handler looks at the current state, emits
//! events, and each emitted event is applied at once to the in-flight state, so later
//! decisions in the same command see it. The events of one command are appended together.

use std::fmt::Debug;
use std::ops::Deref;

use crate::event::DomainEvent;
use crate::snapshot::SnapshotPolicy;

/// What kind of refusal an aggregate's error is, so that front ends (HTTP, CLI) can answer
/// consistently without knowing each domain's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The aggregate the command addresses does not exist.
    NotFound,
    /// The command conflicts with the current state (already exists, wrong state).
    Conflict,
    /// The command breaks a business rule (a quantity of zero, an empty name).
    BrokenRule,
}

/// An aggregate error that says which [`RejectionKind`] it is.
pub trait Rejection: std::error::Error {
    /// The kind of refusal.
    fn kind(&self) -> RejectionKind;
}

/// A consistency boundary: its state is the fold of its events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The aggregate type's stored name, e.g. `order`.
    const TYPE: &'static str;
    /// The commands it handles.
    type Command: Clone + Send + Sync + 'static;
    /// The events it emits and is rebuilt from.
    type Event: DomainEvent + Clone + Debug;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state. Must be deterministic and must not fail: events are
    /// facts, and replaying them always reproduces the same state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides on `command` against the state `decision` dereferences to, emitting events
    /// through it. An error discards everything emitted.
    fn handle(decision: &mut Decision<'_, Self>, command: Self::Command)
    -> Result<(), Self::Error>;

    /// A short name of `command` for metrics, such as `AddLine`; one name for all by default.
    fn command_name(_command: &Self::Command) -> &'static str {
        "command"
    }

    /// Whether the bus snapshots this aggregate, and how often; never by default.
    const SNAPSHOTS: Option<SnapshotPolicy> = None;

    /// The state as a snapshot of the current [`SnapshotPolicy::format`].
    fn to_snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// The state from a snapshot of the current format; `None` when the bytes do not decode,
    /// and the stream is then replayed in full.
    fn from_snapshot(_state: &[u8]) -> Option<Self> {
        None
    }
}

/// The state a command decides against plus the events it has emitted so far.
///
/// The state is cloned only on the first emit, so a command that is refused, or that emits
/// nothing, costs no copy of the aggregate.
pub struct Decision<'a, A: Aggregate> {
    current: &'a A,
    in_flight: Option<A>,
    emitted: Vec<A::Event>,
}

impl<'a, A: Aggregate> Decision<'a, A> {
    /// A decision starting from `current`.
    pub fn new(current: &'a A) -> Self {
        Self { current, in_flight: None, emitted: Vec::new() }
    }

    /// Records `event` and applies it to the in-flight state.
    pub fn emit(&mut self, event: A::Event) {
        let state = self.in_flight.get_or_insert_with(|| self.current.clone());
        state.apply(&event);
        self.emitted.push(event);
    }

    /// The events emitted so far.
    pub fn emitted(&self) -> &[A::Event] {
        &self.emitted
    }

    /// The state after every emitted event, and the events; `None` when nothing was emitted.
    pub fn into_parts(self) -> (Option<A>, Vec<A::Event>) {
        (self.in_flight, self.emitted)
    }
}

impl<A: Aggregate> Deref for Decision<'_, A> {
    type Target = A;

    fn deref(&self) -> &A {
        self.in_flight.as_ref().unwrap_or(self.current)
    }
}

/// Rebuilds an aggregate from its events.
pub fn replay<'e, A: Aggregate>(events: impl IntoIterator<Item = &'e A::Event>) -> A {
    let mut state = A::default();
    for event in events {
        state.apply(event);
    }
    state
}

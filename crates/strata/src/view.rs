//! Read models: a [`View`] is the state of one view instance, a [`ViewLocator`] says which
//! instances an event touches, and a [`StoredView`] is an instance as a view manager keeps
//! it (with the position of the last event applied to it, and whether it is parked).
//!
//! Storing views is the [`crate::ViewManager`]'s job; running them is the projection
//! runner's. This module holds neither.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::{Envelope, RecordedEvent};
use crate::stream::Position;
use crate::table::TableRows;

/// Why a view could not apply an event. The runner retries the event a few times, then
/// parks the instance with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(pub String);

impl ApplyError {
    /// An apply failure that says why.
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// The state of one view instance, folded from the events located to it.
pub trait View<E>: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Folds one event into the view, or says why it cannot. A refused event leaves the
    /// instance as it was before the event (the runner restores it) and parks it.
    fn apply(&mut self, event: &Envelope<E>) -> Result<(), ApplyError>;

    /// The table rows this instance contributes (see [`crate::table`]); none by default.
    /// Must be a function of the state alone: the runner calls it before and after a batch
    /// and commits the difference.
    fn rows(&self, id: &str, rows: &mut TableRows) {
        let _ = (id, rows);
    }
}

/// Maps an event to the ids of the view instances it touches (none, one or several).
pub trait ViewLocator<E>: Send + Sync + 'static {
    /// Appends to `ids` the view ids `event` touches.
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>);
}

impl<E, F> ViewLocator<E> for F
where
    F: Fn(&Envelope<E>, &mut Vec<String>) + Send + Sync + 'static,
{
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>) {
        self(event, ids)
    }
}

/// Locates an event that could not be decoded, from what the store knows of it (its
/// stream, type and metadata). Without one, an undecodable event stops the projection, since
/// the runner cannot tell which instance to park.
pub type RawLocator = fn(&RecordedEvent, &mut Vec<String>);

/// What a per-event row is made from: an event's place and metadata, which every event
/// has whether or not it decodes.
#[derive(Debug, Clone, Copy)]
pub struct LoggedEvent<'a> {
    /// Its global position.
    pub position: Position,
    /// Its stream.
    pub stream: &'a crate::StreamId,
    /// Its version in the stream.
    pub version: crate::Version,
    /// Its type name.
    pub event_type: &'a str,
    /// Who and what caused it.
    pub metadata: &'a crate::EventMetadata,
}

/// States the table rows one event contributes, whatever it holds: for log tables (one
/// row per event, keyed by position) that need no view instance, such as the audit.
pub type EventRows = fn(&LoggedEvent<'_>, &mut TableRows);

/// Why an instance is parked: the first event it could not apply, and the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parking {
    /// The first event waiting (every later event located to the instance waits too).
    pub position: Position,
    /// What the last attempt said.
    pub error: String,
    /// How many times that event has been tried.
    pub attempts: u32,
    /// When the instance was parked.
    pub parked_at: DateTime<Utc>,
}

/// A view instance with the position of the last event applied to it. Events at or below
/// that position are never applied again, which keeps stores without transactions
/// exactly-once too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredView<V> {
    /// The instance's state.
    pub view: V,
    /// The position of the last event applied to it; [`Position::START`] when none was (a
    /// parked instance whose first event failed). Such an instance is deleted when unparked.
    pub position: Position,
    /// Set while the instance is parked: its state is not current and must not be served
    /// as if it were.
    pub parked: Option<Parking>,
}

impl<V> StoredView<V> {
    /// A current (not parked) instance.
    pub fn current(view: V, position: Position) -> Self {
        Self { view, position, parked: None }
    }
}

/// Encodes a view as every backend stores it: JSON.
pub fn encode_view<V: Serialize>(view: &V) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(view)
}

/// Decodes a stored view of `projection`.
pub fn decode_view<V: DeserializeOwned>(
    projection: &str,
    id: &str,
    data: &[u8],
) -> Result<V, crate::ViewError> {
    serde_json::from_slice(data).map_err(|source| crate::ViewError::Codec {
        projection: projection.to_owned(),
        id: id.to_owned(),
        source,
    })
}

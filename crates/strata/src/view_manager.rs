//! The [`ViewManager`] contract: where view instances, their tables, parked events and a
//! projection's [`Checkpoint`] are stored, and the one operation that changes them all
//! together, [`ViewManager::commit`].
//!
//! A commit is the exactly-once point: the changed instances, their table rows, the events
//! that wait on parked instances and the new checkpoint are written in one transaction, and
//! only if the stored checkpoint still equals the one the batch started from. The checkpoint
//! carries a revision besides its position, and every commit moves the revision, so an
//! operator's retry (which applies parked events without moving the position) and a runner's
//! batch can never both act on the same state: the second is [`ViewError::Fenced`].
//!
//! Each projection has two slots. [`Slot::Live`] is what queries read; [`Slot::Rebuild`] is
//! filled from position 0 while the live one keeps serving, then swapped in atomically by
//! [`ViewManager::finish_rebuild`]. The fence, the encoding of views and the rules for
//! instances are written once here and in the runner; backends only store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::RecordedEvent;
use crate::stream::Position;
use crate::table::{RowChange, TableQuery, TableSpec, Value};
use crate::view::{Parking, StoredView, encode_view};

/// Which copy of a projection's storage an operation addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The views queries read.
    Live,
    /// The views a rebuild is filling.
    Rebuild,
}

impl Slot {
    /// The key under which this slot of `projection` is stored (projection names never
    /// contain `#`).
    pub fn key(self, projection: &str) -> String {
        match self {
            Slot::Live => projection.to_owned(),
            Slot::Rebuild => format!("{projection}#rebuild"),
        }
    }

    /// The name of `table` in this slot.
    pub fn table(self, table: &str) -> String {
        match self {
            Slot::Live => table.to_owned(),
            Slot::Rebuild => format!("{table}__rebuild"),
        }
    }
}

/// Checks a projection name: 1 to 48 characters of `[a-z0-9_]`. Names become parts of
/// storage keys and lock names, so they are kept plain.
pub fn check_projection_name(name: &str) -> Result<(), ViewError> {
    let plain = !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain { Ok(()) } else { Err(ViewError::InvalidName(name.to_owned())) }
}

/// How far a projection slot has applied the log, and how many times it was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checkpoint {
    /// Every event up to here was applied, parked, or located to no instance.
    pub position: Position,
    /// Moves with every commit; the fence compares it with the position.
    pub revision: u64,
}

impl Checkpoint {
    /// Never committed.
    pub const START: Checkpoint = Checkpoint { position: Position::START, revision: 0 };

    /// The checkpoint a commit from `self` to `to` leaves.
    pub fn next(self, to: Position) -> Checkpoint {
        Checkpoint { position: to, revision: self.revision + 1 }
    }

    /// The fence every commit passes: the stored checkpoint must be the one the writer
    /// started from. Backends read `actual` inside their transaction and call this.
    pub fn fence(
        projection: &str,
        expected: Checkpoint,
        actual: Checkpoint,
    ) -> Result<(), ViewError> {
        if expected == actual {
            Ok(())
        } else {
            Err(ViewError::Fenced { projection: projection.to_owned(), expected, actual })
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (revision {})", self.position, self.revision)
    }
}

/// Why a view manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The stored checkpoint moved since the writer read it: another runner, a retry or a
    /// rebuild committed in between. Nothing was written.
    #[error("checkpoint of {projection} is {actual}, not {expected}: someone else committed")]
    Fenced {
        /// The projection slot's key.
        projection: String,
        /// The checkpoint the writer started from.
        expected: Checkpoint,
        /// The checkpoint found.
        actual: Checkpoint,
    },
    /// A view could not be encoded or decoded.
    #[error("view {projection}/{id} does not (de)serialize: {source}")]
    Codec {
        /// The projection.
        projection: String,
        /// The view id.
        id: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A rebuild of the projection is already running.
    #[error("projection {0} is already being rebuilt")]
    RebuildInProgress(String),
    /// The projection has no rebuild in the state the caller expected.
    #[error("projection {0} has no rebuild to finish")]
    NoRebuild(String),
    /// A projection or table name that storage cannot use.
    #[error("{0:?} is not a usable projection or table name")]
    InvalidName(String),
    /// A table spec or query that does not fit its table.
    #[error("invalid table use: {0}")]
    InvalidTable(String),
    /// The backend failed.
    #[error("view store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A parked instance, as `GET /admin/projections/{name}/parked` lists it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedInstance {
    /// The instance.
    pub view_id: String,
    /// The first event waiting.
    pub position: Position,
    /// How many events wait.
    pub events: u64,
    /// What the last attempt said.
    pub error: String,
    /// How many times the first event has been tried.
    pub attempts: u32,
    /// When the instance was parked.
    pub parked_at: DateTime<Utc>,
}

/// An event an operator chose to drop from one instance, kept for good.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedEvent {
    /// The instance it was dropped from.
    pub view_id: String,
    /// The event.
    pub position: Position,
    /// Its type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Why, as the operator said.
    pub reason: String,
    /// When.
    pub skipped_at: DateTime<Utc>,
}

/// A rebuild that is running, or that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildRecord {
    /// How far it got.
    pub checkpoint: Checkpoint,
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
    /// The version of the projection's definition it runs: only code of that version goes
    /// on with it, since rows from two definitions must not mix.
    pub version: u32,
}

/// What the view store knows about a projection besides its views.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectionRecord {
    /// The live checkpoint.
    pub checkpoint: Checkpoint,
    /// The version of the projection's definition that built the live views (see
    /// [`crate::Projection::with_version`]); 0 when nothing is stored yet.
    pub version: u32,
    /// How many live instances are parked.
    pub parked: u64,
    /// The rebuild, if one runs or failed.
    pub rebuild: Option<RebuildRecord>,
}

/// Everything one commit writes, atomically, fenced on `from`.
#[derive(Debug)]
pub struct Commit<V> {
    /// The checkpoint the batch started from.
    pub from: Checkpoint,
    /// The position the checkpoint moves to (equal to `from.position` for an operator's
    /// retry or skip, which move no position).
    pub to: Position,
    /// Changed instances. One at [`Position::START`] and not parked is deleted.
    pub views: Vec<(String, StoredView<V>)>,
    /// Instances whose waiting events are all removed (before `parked_events` are added).
    pub released: Vec<String>,
    /// Events that now wait on parked instances.
    pub parked_events: Vec<(String, RecordedEvent)>,
    /// Table changes.
    pub rows: Vec<RowChange>,
    /// Events dropped for good by an operator.
    pub skipped: Vec<SkippedEvent>,
}

impl<V> Commit<V> {
    /// A commit that moves the checkpoint from `from` to `to` and writes nothing else yet.
    pub fn new(from: Checkpoint, to: Position) -> Self {
        Self {
            from,
            to,
            views: Vec::new(),
            released: Vec::new(),
            parked_events: Vec::new(),
            rows: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// A view instance encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedView {
    /// The view id.
    pub id: String,
    /// The view's JSON; `None` deletes the instance.
    pub data: Option<Vec<u8>>,
    /// The position of the last event applied to it.
    pub position: Position,
    /// Set while parked.
    pub parked: Option<Parking>,
}

/// A [`Commit`] with its views encoded: what backends write.
#[derive(Debug)]
pub struct EncodedCommit {
    /// See [`Commit::from`].
    pub from: Checkpoint,
    /// See [`Commit::to`].
    pub to: Position,
    /// The instances to write or delete.
    pub views: Vec<EncodedView>,
    /// See [`Commit::released`].
    pub released: Vec<String>,
    /// See [`Commit::parked_events`].
    pub parked_events: Vec<(String, RecordedEvent)>,
    /// See [`Commit::rows`].
    pub rows: Vec<RowChange>,
    /// See [`Commit::skipped`].
    pub skipped: Vec<SkippedEvent>,
}

impl EncodedCommit {
    /// The checkpoint this commit leaves.
    pub fn next(&self) -> Checkpoint {
        self.from.next(self.to)
    }
}

/// Encodes every view of a commit before anything is written: a view that does not
/// serialize fails the whole commit. Every backend stores views as this JSON.
pub fn encode_commit<V: Serialize>(
    projection: &str,
    commit: Commit<V>,
) -> Result<EncodedCommit, ViewError> {
    let views = commit
        .views
        .into_iter()
        .map(|(id, stored)| {
            let data = if stored.position == Position::START && stored.parked.is_none() {
                None
            } else {
                match encode_view(&stored.view) {
                    Ok(data) => Some(data),
                    Err(source) => {
                        return Err(ViewError::Codec {
                            projection: projection.to_owned(),
                            id,
                            source,
                        });
                    }
                }
            };
            Ok(EncodedView { id, data, position: stored.position, parked: stored.parked })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EncodedCommit {
        from: commit.from,
        to: commit.to,
        views,
        released: commit.released,
        parked_events: commit.parked_events,
        rows: commit.rows,
        skipped: commit.skipped,
    })
}

/// Stores view instances, table rows, parked events and checkpoints of projections.
///
/// Every backend passes `strata_testkit::view_manager_contract` unchanged.
pub trait ViewManager: Send + Sync + 'static {
    /// Creates what `projection`'s live slot needs that is missing (its tables, and its
    /// checkpoint at 0 recording `version`). Idempotent; called when a projection starts.
    /// Returns the version the stored views were built by: when it is not `version`, the
    /// definition changed and the views need a rebuild.
    fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> impl Future<Output = Result<u32, ViewError>> + Send;

    /// The stored instances among `ids` in `slot` of `projection`; missing ids are absent.
    fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, StoredView<V>>, ViewError>> + Send;

    /// The live instance `id` of `projection`, for queries.
    fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredView<V>>, ViewError>> + Send;

    /// The checkpoint of `slot` ([`Checkpoint::START`] if never committed).
    fn checkpoint(
        &self,
        projection: &str,
        slot: Slot,
    ) -> impl Future<Output = Result<Checkpoint, ViewError>> + Send;

    /// Writes `commit` into `slot` in one transaction if the stored checkpoint is still
    /// `commit.from`; otherwise writes nothing and fails with [`ViewError::Fenced`].
    fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> impl Future<Output = Result<(), ViewError>> + Send;

    /// The parked instances in `slot` of `projection`, oldest parked event first.
    fn parked(
        &self,
        projection: &str,
        slot: Slot,
    ) -> impl Future<Output = Result<Vec<ParkedInstance>, ViewError>> + Send;

    /// The events waiting on instance `id` in `slot`, in position order, as stored.
    fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, ViewError>> + Send;

    /// Every event an operator skipped in `projection`, oldest first.
    fn skipped(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<SkippedEvent>, ViewError>> + Send;

    /// The live checkpoint, the number of parked instances and the rebuild, in one read.
    fn record(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<ProjectionRecord, ViewError>> + Send;

    /// Rows of the live `table`, as `query` asks.
    fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> impl Future<Output = Result<Vec<Vec<Value>>, ViewError>> + Send;

    /// Starts a rebuild of `projection`: empties the rebuild slot (views, tables, parked
    /// events) and records a rebuild from position 0 by `version` of the definition, begun
    /// at `started_at`. Fails with [`ViewError::RebuildInProgress`] if one is running; a
    /// failed one is replaced.
    fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Checkpoint, ViewError>> + Send;

    /// Marks the rebuild as failed with `error`, if its checkpoint is still `at`. The live
    /// slot is untouched and keeps serving.
    fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> impl Future<Output = Result<(), ViewError>> + Send;

    /// Swaps the rebuild in, in one transaction: the live instances, tables and parked
    /// events are replaced by the rebuild's, the live checkpoint moves to the rebuild's
    /// position and takes the rebuild's version of the definition, and the rebuild record
    /// is removed. Fenced on both checkpoints; returns the new live checkpoint.
    fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> impl Future<Output = Result<Checkpoint, ViewError>> + Send;
}

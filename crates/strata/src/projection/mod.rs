//! Projections: a named [`Projection`] keeps a set of view instances (and their table rows)
//! up to date by following the store's global order from a checkpoint.
//!
//! - [`reader`]: one shared, decoded read of the log per node, so that N projections cost one
//!   read and one decode per event.
//! - [`batch`]: one batch: locate, load, apply, park what fails, and build the commit.
//! - [`runner`]: the task per projection and node: lease, live following, backoff, rebuilds.
//! - [`control`]: what operators see and do, type-erased: status, lag, parked instances,
//!   retry, skip and rebuild, for any projection of any view type.
//!
//! The exactly-once argument: a batch's instances, rows, parked events and the new
//! checkpoint commit together through [`crate::ViewManager::commit`], fenced on the
//! checkpoint the batch started from; each instance records the last position applied to
//! it. A crash between batches therefore loses nothing and repeats nothing, and the
//! checkpoint never passes an event that was neither applied to its instances nor parked
//! with them.

pub mod batch;
pub mod control;
pub mod delivery;
pub mod follower;
pub mod local;
pub mod reader;
pub mod runner;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::{DomainEvent, Envelope};
use crate::store::StoreError;
use crate::stream::Position;
use crate::table::TableSpec;
use crate::view::{EventRows, RawLocator, View, ViewLocator};
use crate::view_manager::{ViewError, check_projection_name};

pub use control::{
    Awaited, ControlError, InstanceReport, ProjectionHandle, ProjectionState, ProjectionStatus,
    Projections, RebuildProgress, status_of,
};
pub use delivery::Outlet;
pub use follower::{Pulled, Source};
pub use local::LocalView;
pub use runner::ProjectionRunner;

/// How many events a runner reads and commits at once unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// How many events a rebuild reads and commits at once unless told otherwise: larger than a
/// live batch, since nobody waits on a rebuild's single events and commits cost the most.
pub const DEFAULT_REBUILD_BATCH_SIZE: usize = 5000;

/// How many times an event that fails to decode or apply is tried before its instance is
/// parked.
pub const MAX_ATTEMPTS: u32 = 3;

/// Why a batch failed as a whole (not one instance); the runner retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading or saving views failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// An event could not be decoded and the projection has no raw locator to tell which
    /// instance to park, so it cannot move past it.
    #[error("the event at position {position} does not decode and cannot be located: {error}")]
    Undecodable {
        /// The event.
        position: Position,
        /// What the decoder said.
        error: String,
    },
    /// The stored checkpoint is beyond the log's head.
    #[error(
        "the projection's checkpoint {checkpoint} is beyond the event log's head {head}: its views were built from another log; rebuild the projection"
    )]
    AheadOfLog {
        /// The stored checkpoint.
        checkpoint: Position,
        /// The log's head.
        head: Position,
    },
    /// The rows an instance states do not fit the projection's tables (during an
    /// operator's retry, where there is no batch to park it in).
    #[error("the rows of view {view_id} do not fit its tables: {error}")]
    Rows {
        /// The instance.
        view_id: String,
        /// What does not fit.
        error: String,
    },
    /// The rows the projection states per event do not fit its tables: a bug in the
    /// projection, not in one instance, so the batch cannot go on.
    #[error(
        "the rows stated for the events up to {last} do not fit the projection's tables: {error}"
    )]
    EventRows {
        /// The batch's last event.
        last: Position,
        /// What does not fit.
        error: String,
    },
    /// A rebuild stopped; the live views are as they were.
    #[error("{0}")]
    RebuildFailed(String),
    /// The live views were built by a newer version of the projection's definition than
    /// this code declares; older code would write rows the newer definition does not expect.
    #[error(
        "the views were built by version {stored} of the projection's definition and this node runs version {version}: it leaves them to a node with the newer version (an operator's rebuild here brings them back to version {version})"
    )]
    NewerDefinition {
        /// The version that built the live views.
        stored: u32,
        /// This code's version.
        version: u32,
    },
    /// A locator panicked; no instance can be blamed, so the batch cannot go on.
    #[error("the view locator panicked at position {0}")]
    LocatorPanicked(Position),
    /// A command a saga sent could not be delivered (the store failed); the batch is
    /// tried again, and the command with it, under the same idempotency key.
    #[error("a command sent at position {position} could not be delivered: {error}")]
    Dispatch {
        /// The event that caused the command.
        position: Position,
        /// Why.
        error: String,
    },
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a projection does with an event beyond folding it into an instance: a saga decides
/// on it and sends commands. Called after the batch's events are applied and before its
/// commit, once per applied event and instance, in order; never for an event passed over.
/// `acting` is false while rebuilding, where only the instance's state may change.
pub(crate) trait Reactor<E, V>: Send + Sync + 'static {
    fn react<'a>(
        &'a self,
        id: &'a str,
        view: &'a mut V,
        event: &'a Envelope<E>,
        acting: bool,
    ) -> BoxFuture<'a, Result<(), ReactionFailed>>;
}

/// Why a reaction failed.
pub(crate) enum ReactionFailed {
    /// The instance cannot take the event: retried, then parked like a view's refusal.
    Instance(String),
    /// The batch cannot go on (a store failed): retried with backoff.
    Batch(ProjectionError),
}

/// A named projection: which view type it keeps, how events map to its instances, and the
/// tables its instances contribute rows to.
pub struct Projection<E, V, L> {
    name: &'static str,
    locator: L,
    raw_locator: Option<RawLocator>,
    event_rows: Option<EventRows>,
    tables: &'static [&'static TableSpec],
    batch_size: usize,
    rebuild_batch_size: usize,
    version: u32,
    reactor: Option<Arc<dyn Reactor<E, V>>>,
    _types: PhantomData<fn() -> (E, V)>,
}

impl<E, V, L> Projection<E, V, L>
where
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    /// A projection called `name` (its checkpoint's and its views' key) using `locator`.
    ///
    /// # Panics
    /// When `name` is not 1 to 48 characters of `[a-z0-9_]`: names are fixed in code, and a
    /// bad one is a bug to find at start-up.
    pub fn new(name: &'static str, locator: L) -> Self {
        if let Err(error) = check_projection_name(name) {
            panic!("{error}");
        }
        Self {
            name,
            locator,
            raw_locator: None,
            event_rows: None,
            tables: &[],
            batch_size: DEFAULT_BATCH_SIZE,
            rebuild_batch_size: DEFAULT_REBUILD_BATCH_SIZE,
            version: 1,
            reactor: None,
            _types: PhantomData,
        }
    }

    /// Locates events that do not decode, so that their instances can be parked instead of
    /// stopping the projection.
    pub fn with_raw_locator(mut self, raw_locator: RawLocator) -> Self {
        self.raw_locator = Some(raw_locator);
        self
    }

    /// Adds the rows `event_rows` states for every event to the projection's tables,
    /// beside (or instead of) the rows of its view instances.
    pub fn with_event_rows(mut self, event_rows: EventRows) -> Self {
        self.event_rows = Some(event_rows);
        self
    }

    /// Keeps `tables`, filled from [`View::rows`] (and [`Projection::with_event_rows`]).
    pub fn with_tables(mut self, tables: &'static [&'static TableSpec]) -> Self {
        self.tables = tables;
        self
    }

    /// Reads and commits up to `batch_size` events at once.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Reads and commits up to `batch_size` events at once while rebuilding.
    pub fn with_rebuild_batch_size(mut self, batch_size: usize) -> Self {
        self.rebuild_batch_size = batch_size.max(1);
        self
    }

    /// Declares the version of the projection's definition (1 unless said). Raise it when a
    /// change makes views built by the old definition wrong (another instance per id, other
    /// tables): a node that finds views of another version rebuilds them, beside the old
    /// ones, and swaps them in.
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Reacts to every event applied to an instance (see [`Reactor`]).
    pub(crate) fn with_reactor(mut self, reactor: Arc<dyn Reactor<E, V>>) -> Self {
        self.reactor = Some(reactor);
        self
    }

    /// The version of the projection's definition.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tables it keeps.
    pub fn tables(&self) -> &'static [&'static TableSpec] {
        self.tables
    }
}

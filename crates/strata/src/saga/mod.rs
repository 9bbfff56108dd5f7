//! Sagas: projections whose output is commands, for work that spans aggregates (an order
//! reserves stock on several products, and gives it back when one has none).
//!
//! A [`Saga`] locates events to instances like a view locator does, and decides on each
//! event with its instance's state, naming the commands to send and the deadlines to keep
//! ([`Actions`]). It runs as a projection (see [`spawn`]): checkpointed, under a lease, its
//! failing instances parked and shown in `/admin/projections`. Each instance
//! ([`SagaInstance`]) is stored with the checkpoint like a view.
//!
//! - [`instance`]: the stored instance, its deadlines, history and table rows.
//! - [`reactor`]: deciding on an event and sending the commands.
//! - [`deadlines`]: the task that sends scheduled commands when they fall due.
//! - [`control`]: what operators see: counts by state, one instance's report.
//!
//! Nothing is sent twice: every command goes through the command bus with an idempotency
//! key made of the saga, the instance and the position of the event that caused it (or the
//! deadline), and the store records that key in the same transaction as the command's
//! events. Commands are sent before the batch that decided them commits; a crash in between
//! replays the batch, which decides the same commands, whose keys answer them without
//! acting again. A rebuild decides again but sends nothing, so a rebuilt saga never acts.
//!
//! A saga that starts on a log that already holds events (a new saga, an imported log, a
//! view store deleted to start afresh) first decides on those events without acting: their
//! commands were sent long ago, perhaps with keys since expired. The position it acts from
//! is written once, before its first batch, as the checkpoint of `<saga>_acts_from`, so a
//! crash during that first catch-up, or another node starting at the same time, keeps it.
//!
//! A saga learns how its commands went from events, never from answers: a command that
//! succeeds appends events the saga locates; a refusal the saga must know of is turned into
//! an event by [`Saga::dispatch`] (under the same key, so exactly one of the two is ever
//! recorded).

pub mod control;
pub mod deadlines;
pub mod instance;
pub mod reactor;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::CommandContext;
use crate::event::{DomainEvent, Envelope};
use crate::lease::Leases;
use crate::projection::reader::SharedReader;
use crate::projection::{Projection, ProjectionHandle, ProjectionRunner};
use crate::store::EventStore;
use crate::stream::Position;
use crate::table::{Column, ColumnType, TableKind, TableSpec};
use crate::view::{ApplyError, RawLocator};
use crate::view_manager::{Checkpoint, Commit, Slot, ViewError, ViewManager};

pub use control::{SagaCounts, SagaHandle, Sagas};
pub use instance::{Deadline, SagaInstance, SagaStatus, Step};

/// A process that spans aggregates, driven by events and acting by commands.
pub trait Saga<E: DomainEvent>: Send + Sync + 'static {
    /// The saga's name: its projection's, and its tables' prefix.
    const NAME: &'static str;
    /// Its tables, declared with [`saga_tables!`](crate::saga_tables).
    const TABLES: &'static SagaTables;
    /// What the admin API calls an instance's id (`order_id` for an order's saga).
    const ID_FIELD: &'static str = "id";
    /// The state of one instance.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What it sends; stored with deadlines, so it must serialize.
    type Command: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Locates events that do not decode, from what the store knows of them, so that their
    /// instances park instead of the whole saga stopping. None by default.
    const RAW_LOCATOR: Option<RawLocator> = None;

    /// Appends to `ids` the instances `event` concerns.
    fn locate(&self, event: &Envelope<E>, ids: &mut Vec<String>);

    /// Decides on `event` for one instance: changes its state and names, through `actions`,
    /// the commands to send and the deadlines to keep. Must be a function of the state and
    /// the event (and the saga's settings), since a replay must decide the same.
    fn react(
        &self,
        state: &mut Self::State,
        event: &Envelope<E>,
        actions: &mut Actions<Self::Command>,
    ) -> Result<(), ApplyError>;

    /// Whether an instance is still at work, done, or ended without reaching its goal.
    fn status(state: &Self::State) -> SagaStatus;

    /// A short name of `command`, for the instance's history.
    fn command_name(command: &Self::Command) -> String;

    /// Sends `command` for instance `id` through the command bus with `context`, which
    /// carries the idempotency key. A refusal the saga must learn of is recorded as an
    /// event under the same context; [`DispatchError::Refused`] parks the instance.
    fn dispatch(
        &self,
        id: &str,
        command: Self::Command,
        context: &CommandContext,
    ) -> impl Future<Output = Result<(), DispatchError>> + Send;

    /// What the admin API shows of an instance's state, as JSON object fields.
    fn report(state: &Self::State) -> serde_json::Map<String, serde_json::Value>;
}

/// Why a command could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The command was refused and the saga has no event for it: the instance parks (after
    /// retries) until an operator retries or skips it.
    #[error("command refused: {0}")]
    Refused(String),
    /// The command could not be delivered (the store failed): the batch is tried again.
    #[error("command not delivered: {0}")]
    Unavailable(String),
}

/// What a saga decided on one event.
#[derive(Debug)]
pub struct Actions<C> {
    pub(crate) sent: Vec<C>,
    pub(crate) scheduled: Vec<(String, DateTime<Utc>, C)>,
    pub(crate) cancelled: Vec<String>,
}

impl<C> Default for Actions<C> {
    fn default() -> Self {
        Self { sent: Vec::new(), scheduled: Vec::new(), cancelled: Vec::new() }
    }
}

impl<C> Actions<C> {
    /// Sends `command`, in order with the others of this event.
    pub fn send(&mut self, command: C) {
        self.sent.push(command);
    }

    /// Sends `command` at `due`, unless cancelled first; replaces a deadline of the same
    /// name.
    pub fn schedule(&mut self, name: impl Into<String>, due: DateTime<Utc>, command: C) {
        let name = name.into();
        self.cancelled.retain(|cancelled| *cancelled != name);
        self.scheduled.retain(|(scheduled, _, _)| *scheduled != name);
        self.scheduled.push((name, due, command));
    }

    /// Drops the deadline called `name`, if any.
    pub fn cancel(&mut self, name: impl Into<String>) {
        let name = name.into();
        self.scheduled.retain(|(scheduled, _, _)| *scheduled != name);
        self.cancelled.push(name);
    }

    /// The commands sent so far, for tests of a saga's decisions.
    pub fn sent(&self) -> &[C] {
        &self.sent
    }

    /// The deadlines scheduled so far (name, due, command).
    pub fn scheduled(&self) -> &[(String, DateTime<Utc>, C)] {
        &self.scheduled
    }

    /// The deadlines cancelled so far.
    pub fn cancelled(&self) -> &[String] {
        &self.cancelled
    }
}

const DEADLINE_COLUMNS: [Column; 2] =
    [Column::new("id", ColumnType::Text), Column::new("due", ColumnType::Timestamp)];

const STATE_COLUMNS: [Column; 2] =
    [Column::new("status", ColumnType::Text), Column::new("instances", ColumnType::Integer)];

/// The tables of one saga: each instance's next deadline (so that the deadline task finds
/// what is due with one indexed query) and the number of instances in each state.
#[derive(Debug)]
pub struct SagaTables {
    /// `<saga>_deadlines`: `id`, `due`.
    pub deadlines: TableSpec,
    /// `<saga>_states`: `status`, `instances` (sums).
    pub states: TableSpec,
}

impl SagaTables {
    /// The tables called `deadlines` and `states`; use [`saga_tables!`](crate::saga_tables).
    pub const fn new(deadlines: &'static str, states: &'static str) -> Self {
        Self {
            deadlines: TableSpec {
                name: deadlines,
                columns: &DEADLINE_COLUMNS,
                key_columns: 1,
                indexes: &[&["due", "id"]],
                kind: TableKind::Rows,
            },
            states: TableSpec {
                name: states,
                columns: &STATE_COLUMNS,
                key_columns: 1,
                indexes: &[],
                kind: TableKind::Sums,
            },
        }
    }
}

/// Declares the tables of the saga called `$name`: `static FULFILMENT: SagaTables` and
/// `static FULFILMENT_TABLES: [&TableSpec; 2]` for `saga_tables!(FULFILMENT, "fulfilment")`.
#[macro_export]
macro_rules! saga_tables {
    ($vis:vis $tables:ident, $list:ident, $name:literal) => {
        $vis static $tables: $crate::saga::SagaTables =
            $crate::saga::SagaTables::new(concat!($name, "_deadlines"), concat!($name, "_states"));
        $vis static $list: [&$crate::table::TableSpec; 2] = [&$tables.deadlines, &$tables.states];
    };
}

/// The projection that runs `saga`, with its tables, sending commands only for events
/// after `acts_from`.
pub fn projection<E, G>(
    saga: Arc<G>,
    tables: &'static [&'static TableSpec],
    acts_from: Position,
) -> Projection<E, SagaInstance<G, E>, reactor::SagaLocator<G>>
where
    E: DomainEvent,
    G: Saga<E>,
{
    let projection = Projection::new(G::NAME, reactor::SagaLocator(saga.clone()))
        .with_tables(tables)
        .with_reactor(Arc::new(reactor::SagaReactor { saga, acts_from }));
    match G::RAW_LOCATOR {
        Some(raw) => projection.with_raw_locator(raw),
        None => projection,
    }
}

/// The position after which `saga` acts: the log's head when the saga first started, so
/// that a saga new to a log that holds events does not act on them. Decided once and
/// stored, as one more than that head (a checkpoint at the start means "not decided").
pub async fn acts_from<S, M>(saga: &str, store: &S, views: &M) -> Result<Position, ViewError>
where
    S: EventStore,
    M: ViewManager,
{
    let marker = format!("{saga}_acts_from");
    views.prepare(&marker, &[], 1).await?;
    let decided = |stored: Checkpoint| Position(stored.position.0.saturating_sub(1));
    let stored = views.checkpoint(&marker, Slot::Live).await?;
    if stored != Checkpoint::START {
        return Ok(decided(stored));
    }
    // A saga that has committed before this marker existed has acted on everything.
    let head = if views.checkpoint(saga, Slot::Live).await? == Checkpoint::START {
        store.head()
    } else {
        Position::START
    };
    let marked = Position(head.0 + 1);
    match views.commit(&marker, Slot::Live, Commit::<()>::new(Checkpoint::START, marked)).await {
        Ok(()) => {
            if head > Position::START {
                tracing::info!(saga, %head, "saga starts on a log that holds events: it acts only on what comes after them");
            }
            Ok(head)
        }
        // Another node decided first.
        Err(ViewError::Fenced { .. }) => Ok(decided(views.checkpoint(&marker, Slot::Live).await?)),
        Err(error) => Err(error),
    }
}

/// Runs `saga` on this node whenever it holds the saga's lease, and its deadlines with it.
/// Returns the projection's handle (for `/admin/projections`) and the saga's.
pub async fn spawn<S, M, E, G, L>(
    runner: &ProjectionRunner,
    saga: Arc<G>,
    tables: &'static [&'static TableSpec],
    reader: Arc<SharedReader<S, E>>,
    views: Arc<M>,
    leases: Arc<L>,
) -> Result<(ProjectionHandle, SagaHandle), ViewError>
where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    G: Saga<E>,
    L: Leases,
{
    views.prepare(G::NAME, tables, 1).await?;
    let acts_from = acts_from(G::NAME, reader.store().as_ref(), views.as_ref()).await?;
    let projection = projection(saga.clone(), tables, acts_from);
    let handle = runner.spawn_shared(projection, reader, views.clone(), leases);
    let saga_handle = SagaHandle::start(saga, views, &handle, runner.node_id().to_owned());
    Ok((handle, saga_handle))
}

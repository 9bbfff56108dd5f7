//! What operators see of a running projection and do to it, for any view type: its status
//! and lag, its parked instances, retrying or skipping one, the events skipped for good, and
//! rebuilding it. A [`ProjectionHandle`] hides the projection's types behind these
//! operations, so that one admin API serves every projection of every application.
//!
//! Every operation reads or writes the view store, never only this node's memory, so any
//! node of a cluster answers for every projection; a retry or a skip runs where it is asked
//! and is fenced against the owner's batches like a batch is against another runner.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ProjectionError;
use super::runner::{Engine, Shared};
use crate::event::DomainEvent;
use crate::store::{EventStore, StoreError};
use crate::stream::Position;
use crate::view::{View, ViewLocator};
use crate::view_manager::{
    ParkedInstance, RebuildRecord, SkippedEvent, Slot, ViewError, ViewManager,
};

use super::BoxFuture;

/// How many times a retry or skip is tried again when a batch commits in between.
const REPLAY_TRIES: usize = 5;

/// What a projection is doing, as `GET /admin/projections` says it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionState {
    /// A node runs it.
    Running,
    /// A rebuild is filling fresh storage; the live views keep serving.
    Rebuilding,
    /// No node runs it right now.
    Stopped,
    /// Its batches fail (see `error`), or its last rebuild failed.
    Failed,
}

/// A running rebuild's progress.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildProgress {
    /// How far the rebuild got.
    pub position: Position,
    /// The store's head.
    pub head: Position,
    /// Events per second since it began.
    pub events_per_s: f64,
    /// Seconds until it reaches the head at that rate; `None` before it has a rate.
    pub eta_s: Option<f64>,
}

impl RebuildProgress {
    fn of(record: &RebuildRecord, head: Position) -> Self {
        let position = record.checkpoint.position;
        let elapsed = (Utc::now() - record.started_at).num_milliseconds().max(1) as f64 / 1000.0;
        let events_per_s = position.0 as f64 / elapsed;
        let remaining = head.0.saturating_sub(position.0) as f64;
        let eta_s = (events_per_s > 0.0).then(|| round3(remaining / events_per_s));
        Self { position, head, events_per_s: round3(events_per_s), eta_s }
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Where a projection stands, as `GET /admin/projections` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The position its live views reflect.
    pub position: Position,
    /// The store's head.
    pub head: Position,
    /// How many positions it is behind the head.
    pub lag_events: u64,
    /// The age in seconds of the oldest event not yet applied; 0 when caught up.
    pub lag_seconds: f64,
    /// What it is doing.
    pub status: ProjectionState,
    /// How many instances are parked.
    pub parked: u64,
    /// The running rebuild, if any.
    pub rebuild: Option<RebuildProgress>,
    /// The node running it, if any node does right now.
    pub owner: Option<String>,
    /// Why it is failing, when it is.
    pub error: Option<String>,
}

/// Where projection `name` stands, read from the stores: its checkpoint (or `known`, if
/// that is newer), the lag in events and in seconds, its parked instances and its rebuild.
/// `owner` is the node running it, if any; `failure` why its batches fail on that node.
/// Running projections report through [`ProjectionHandle::status`]; tools that run none
/// (`strata projections list`) call this directly.
pub async fn status_of<S: EventStore, M: ViewManager>(
    name: &str,
    store: &S,
    views: &M,
    owner: Option<String>,
    failure: Option<String>,
    known: Position,
) -> Result<ProjectionStatus, ControlError> {
    let head = store.head();
    let record = views.record(name).await?;
    let position = record.checkpoint.position.max(known);
    let lag_seconds = if head > position {
        let oldest = store.read_all(position, 1).await?;
        oldest.first().map_or(0.0, |event| {
            let age = Utc::now() - event.metadata.recorded_at;
            round3(age.num_milliseconds().max(0) as f64 / 1000.0)
        })
    } else {
        0.0
    };
    let (status, error, rebuild) = match record.rebuild {
        Some(RebuildRecord { error: Some(error), .. }) => {
            (ProjectionState::Failed, Some(error), None)
        }
        Some(rebuild) => {
            (ProjectionState::Rebuilding, failure, Some(RebuildProgress::of(&rebuild, head)))
        }
        None => match failure {
            Some(failure) => (ProjectionState::Failed, Some(failure), None),
            None if owner.is_some() => (ProjectionState::Running, None, None),
            None => (ProjectionState::Stopped, None, None),
        },
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        position,
        head,
        lag_events: head.0.saturating_sub(position.0),
        lag_seconds,
        status,
        parked: record.parked,
        rebuild,
        owner,
        error,
    })
}

/// The status of an entry that every node runs on its own (a follower, a node-local view):
/// always running on `node_id`, failed while `failure` says why.
pub(crate) fn local_status(
    name: &str,
    node_id: &str,
    (position, head): (Position, Position),
    lag_seconds: f64,
    failure: Option<String>,
) -> ProjectionStatus {
    let status = if failure.is_some() { ProjectionState::Failed } else { ProjectionState::Running };
    ProjectionStatus {
        name: name.to_owned(),
        position,
        head,
        lag_events: head.0.saturating_sub(position.0),
        lag_seconds: round3(lag_seconds),
        status,
        parked: 0,
        rebuild: None,
        owner: Some(node_id.to_owned()),
        error: failure,
    }
}

/// An instance after a retry or a skip.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceReport {
    /// The instance.
    pub view_id: String,
    /// The last event applied to it.
    pub position: Position,
    /// Still parked (at a later event, or again at the same one), or `None`.
    pub parked: Option<ParkedInstance>,
    /// Its state as JSON; `None` when it reflects no event and so no longer exists.
    pub view: Option<serde_json::Value>,
}

/// Why an operation on a projection failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The instance is not parked (or does not exist).
    #[error("projection {projection} has no parked instance {view_id:?}")]
    NotParked {
        /// The projection.
        projection: String,
        /// The instance asked for.
        view_id: String,
    },
    /// A rebuild is already running.
    #[error("projection {0} is already being rebuilt")]
    RebuildInProgress(String),
    /// A delivery to another service, or a follower of one: it keeps no views to rebuild.
    #[error("{0} moves events between services; it keeps no views to rebuild")]
    KeepsNoViews(String),
    /// A view each node keeps on its own disk: it is built again by removing it there.
    #[error(
        "{0} is kept by each node on its own disk; to build it again, stop the node, delete \
         its files and start it"
    )]
    NodeLocal(String),
    /// The projection's batches kept committing in between; try again.
    #[error("projection {0} kept changing during the operation; try again")]
    Busy(String),
    /// The view store failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replayed events failed as a whole.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The operations of one projection, with its types erased.
/// The operator's side of one listed entry. The instance operations default to those of
/// an entry that keeps no view instances (a delivery, a follower, a node-local view):
/// nothing parked or skipped, nothing to retry.
pub(crate) trait Operations: Send + Sync {
    fn name(&self) -> &'static str;
    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ControlError>>;
    fn rebuild(&self) -> BoxFuture<'_, Result<(), ControlError>>;

    fn parked(&self) -> BoxFuture<'_, Result<Vec<ParkedInstance>, ControlError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn replay(
        &self,
        view_id: String,
        _skip: Option<String>,
    ) -> BoxFuture<'_, Result<InstanceReport, ControlError>> {
        let projection = self.name().to_owned();
        Box::pin(async move { Err(ControlError::NotParked { projection, view_id }) })
    }

    fn skipped(&self) -> BoxFuture<'_, Result<Vec<SkippedEvent>, ControlError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// [`Operations`] of one projection's engine.
pub(crate) struct Control<S, M, E, V, L> {
    pub(crate) engine: Arc<Engine<S, M, E, V, L>>,
}

impl<S, M, E, V, L> Control<S, M, E, V, L>
where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    async fn status_now(&self) -> Result<ProjectionStatus, ControlError> {
        let shared = &self.engine.shared;
        let (owner, failure, known) =
            (shared.owner.borrow().clone(), shared.failure(), *shared.position.borrow());
        let store = self.engine.reader.store().as_ref();
        status_of(self.name(), store, self.engine.views.as_ref(), owner, failure, known).await
    }

    async fn replay_now(
        &self,
        view_id: String,
        skip: Option<String>,
    ) -> Result<InstanceReport, ControlError> {
        let views = self.engine.views.as_ref();
        for _ in 0..REPLAY_TRIES {
            let replayed = self
                .engine
                .projection
                .replay_parked(views, Slot::Live, &view_id, skip.as_deref())
                .await?;
            let Some(replayed) = replayed else { continue };
            let Some(replayed) = replayed else {
                return Err(ControlError::NotParked {
                    projection: self.name().to_owned(),
                    view_id,
                });
            };
            let stored = replayed.stored;
            let exists = stored.position > Position::START || stored.parked.is_some();
            let view = if exists { serde_json::to_value(&stored.view).ok() } else { None };
            let parked = stored.parked.map(|parking| ParkedInstance {
                view_id: view_id.clone(),
                position: parking.position,
                events: replayed.waiting,
                error: parking.error,
                attempts: parking.attempts,
                parked_at: parking.parked_at,
            });
            match &parked {
                Some(parked) => {
                    tracing::warn!(projection = self.name(), %view_id, position = %parked.position, error = %parked.error, "retried instance parked again")
                }
                None => {
                    tracing::info!(projection = self.name(), %view_id, skipped = skip.is_some(), "parked instance released")
                }
            }
            return Ok(InstanceReport { view_id, position: stored.position, parked, view });
        }
        Err(ControlError::Busy(self.name().to_owned()))
    }
}

impl<S, M, E, V, L> Operations for Control<S, M, E, V, L>
where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    fn name(&self) -> &'static str {
        self.engine.projection.name()
    }

    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ControlError>> {
        Box::pin(self.status_now())
    }

    fn parked(&self) -> BoxFuture<'_, Result<Vec<ParkedInstance>, ControlError>> {
        Box::pin(async move { Ok(self.engine.views.parked(self.name(), Slot::Live).await?) })
    }

    fn replay(
        &self,
        view_id: String,
        skip: Option<String>,
    ) -> BoxFuture<'_, Result<InstanceReport, ControlError>> {
        Box::pin(self.replay_now(view_id, skip))
    }

    fn skipped(&self) -> BoxFuture<'_, Result<Vec<SkippedEvent>, ControlError>> {
        Box::pin(async move { Ok(self.engine.views.skipped(self.name()).await?) })
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            let (tables, version) =
                (self.engine.projection.tables(), self.engine.projection.version());
            match self.engine.views.begin_rebuild(self.name(), tables, version, Utc::now()).await {
                Ok(_) => {
                    tracing::info!(projection = self.name(), "rebuild asked for");
                    self.engine.shared.wake.notify_one();
                    Ok(())
                }
                Err(ViewError::RebuildInProgress(name)) => {
                    Err(ControlError::RebuildInProgress(name))
                }
                Err(error) => Err(error.into()),
            }
        })
    }
}

/// A running projection: its progress, a way to wait for it, and its operations.
pub struct ProjectionHandle {
    name: &'static str,
    shared: Arc<Shared>,
    position: watch::Receiver<Position>,
    operations: Arc<dyn Operations>,
    task: JoinHandle<()>,
}

impl ProjectionHandle {
    pub(crate) fn new(
        name: &'static str,
        shared: Arc<Shared>,
        operations: Arc<dyn Operations>,
        task: JoinHandle<()>,
    ) -> Self {
        let position = shared.position.subscribe();
        Self { name, shared, position, operations, task }
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The node running the projection, as it changes.
    pub(crate) fn owner_changes(&self) -> watch::Receiver<Option<String>> {
        self.shared.owner.subscribe()
    }

    /// The position its live views reflect now, as this node knows it.
    pub fn position(&self) -> Position {
        *self.position.borrow()
    }

    /// The node running it, if any.
    pub fn owner(&self) -> Option<String> {
        self.shared.owner.borrow().clone()
    }

    /// Events this node committed into the live views since it started.
    pub fn events_applied(&self) -> u64 {
        self.shared.events_applied.load(Ordering::Relaxed)
    }

    /// Tries of an event on an instance that failed on this node since it started.
    pub fn failed_applies(&self) -> u64 {
        self.shared.failed_applies.load(Ordering::Relaxed)
    }

    /// Waits until the views reflect `target` or `timeout` passes; returns the position
    /// reached, `Err` with the position at the deadline when it was not reached.
    pub async fn wait_for(
        &self,
        target: Position,
        timeout: Duration,
    ) -> Result<Position, Position> {
        let mut position = self.position.clone();
        let now = *position.borrow();
        if now >= target {
            return Ok(now);
        }
        // Counted while it waits, so the runner on this node does not rest between batches
        // (a runner on another node does: the wait is then up to its rest longer).
        let _awaited = self.awaited();
        let reached = tokio::time::timeout(timeout, position.wait_for(|p| *p >= target)).await;
        match reached {
            Ok(Ok(reached)) => Ok(*reached),
            _ => Err(*self.position.borrow()),
        }
    }

    /// Marks the projection as awaited until the guard is dropped: meanwhile its runner on
    /// this node takes each batch as soon as there are events, without resting between
    /// them. For a request that waits on what the projection does next without a position
    /// to wait for, such as the outcome of a saga's commands.
    pub fn awaited(&self) -> Awaited<'_> {
        self.shared.waiters.fetch_add(1, Ordering::AcqRel);
        self.shared.hurry.notify_one();
        Awaited(&self.shared)
    }

    /// Where the projection stands: position, lag, state, parked instances and rebuild.
    pub async fn status(&self) -> Result<ProjectionStatus, ControlError> {
        self.operations.status().await
    }

    /// Its parked instances, oldest parked event first.
    pub async fn parked(&self) -> Result<Vec<ParkedInstance>, ControlError> {
        self.operations.parked().await
    }

    /// Applies the events waiting on parked instance `view_id` once, in order; parks it
    /// again with the new error if one still fails.
    pub async fn retry(&self, view_id: &str) -> Result<InstanceReport, ControlError> {
        self.operations.replay(view_id.to_owned(), None).await
    }

    /// Drops the first event waiting on parked instance `view_id` for good, recording
    /// `reason`, and applies the rest as [`ProjectionHandle::retry`] does.
    pub async fn skip(&self, view_id: &str, reason: &str) -> Result<InstanceReport, ControlError> {
        self.operations.replay(view_id.to_owned(), Some(reason.to_owned())).await
    }

    /// Every event skipped for good.
    pub async fn skipped(&self) -> Result<Vec<SkippedEvent>, ControlError> {
        self.operations.skipped().await
    }

    /// Starts a rebuild from position 0 into fresh storage; the node running the
    /// projection fills it while the live views keep serving, then swaps it in.
    pub async fn rebuild(&self) -> Result<(), ControlError> {
        self.operations.rebuild().await
    }

    /// Stops the projection on this node. A batch in flight is either committed whole or not
    /// at all.
    pub fn stop(&self) {
        self.task.abort();
        self.shared.stop_running();
        self.shared.owner.send_replace(None);
    }
}

impl Drop for ProjectionHandle {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.stop_running();
    }
}

/// The projections a node runs, by name: what the admin API and metrics go through.
#[derive(Default)]
pub struct Projections {
    handles: Vec<ProjectionHandle>,
}

impl Projections {
    /// No projections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a running projection.
    pub fn push(&mut self, handle: ProjectionHandle) {
        self.handles.push(handle);
    }

    /// The projection called `name`.
    pub fn get(&self, name: &str) -> Option<&ProjectionHandle> {
        self.handles.iter().find(|handle| handle.name() == name)
    }

    /// Every projection, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &ProjectionHandle> {
        self.handles.iter()
    }

    /// Where every projection stands, in the order added.
    pub async fn statuses(&self) -> Result<Vec<ProjectionStatus>, ControlError> {
        let mut statuses = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            statuses.push(handle.status().await?);
        }
        Ok(statuses)
    }

    /// Stops every projection on this node.
    pub fn stop(&self) {
        for handle in &self.handles {
            handle.stop();
        }
    }
}

/// A projection awaited by a query ([`ProjectionHandle::awaited`]), counted in
/// [`Shared::waiters`] until dropped.
#[must_use = "the projection is awaited only while the guard lives"]
pub struct Awaited<'a>(&'a Shared);

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

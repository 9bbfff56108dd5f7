//! The projection runner: follows the store's global order from a checkpoint and keeps a set
//! of view instances up to date, one transaction per batch.
//!
//! A batch is read after the checkpoint, every event is located to its view instances, each
//! instance is loaded once, all its events are applied, and the changed instances are saved
//! with the new checkpoint through [`ViewManager::commit`]. A crash between batches therefore
//! loses nothing and repeats nothing: the next run starts from the committed checkpoint.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::{DecodeError, DomainEvent, Envelope};
use crate::lease::{Lease, Leases, LocalLeases};
use crate::store::{EventStore, StoreError};
use crate::stream::Position;
use crate::view::{StoredView, View, ViewError, ViewLocator, ViewManager};

/// How many events a runner reads and commits at once unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Why a batch failed; the runner retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading or saving views failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// An event could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stored checkpoint is beyond the log's head.
    #[error("the projection's checkpoint is beyond the event log's head")]
    AheadOfLog,
    /// A view or locator panicked while applying the batch.
    #[error("a view or locator panicked")]
    Panicked,
}

/// A named projection: which view type it keeps and how events map to its instances.
pub struct Projection<E, V, L> {
    name: &'static str,
    locator: L,
    batch_size: usize,
    _types: PhantomData<fn() -> (E, V)>,
}

impl<E, V, L> Projection<E, V, L>
where
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    /// A projection called `name` (its checkpoint's and its views' key) using `locator`.
    pub fn new(name: &'static str, locator: L) -> Self {
        Self { name, locator, batch_size: DEFAULT_BATCH_SIZE, _types: PhantomData }
    }

    /// Reads and commits up to `batch_size` events at once.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Processes one batch after `checkpoint` and returns the new checkpoint, or `None` when
    /// there was nothing to read.
    pub async fn run_batch<S: EventStore, M: ViewManager>(
        &self,
        store: &S,
        views: &M,
        checkpoint: Position,
    ) -> Result<Option<Position>, ProjectionError> {
        let records = store.read_all(checkpoint, self.batch_size).await?;
        let Some(last) = records.last().map(|record| record.position) else {
            return Ok(None);
        };
        let mut located: Vec<(Envelope<E>, std::ops::Range<usize>)> =
            Vec::with_capacity(records.len());
        let mut ids: Vec<String> = Vec::new();
        for record in &records {
            let envelope = Envelope::<E>::decode(record)?;
            let start = ids.len();
            self.locator.locate(&envelope, &mut ids);
            located.push((envelope, start..ids.len()));
        }
        let mut unique: Vec<String> = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        let mut instances: HashMap<String, StoredView<V>> =
            views.load::<V>(self.name, &unique).await?;
        let mut changed: HashMap<&str, ()> = HashMap::new();
        for (envelope, range) in &located {
            for id in &ids[range.clone()] {
                let instance = instances.entry(id.clone()).or_insert_with(|| StoredView {
                    view: V::default(),
                    position: Position::START,
                });
                if envelope.position > instance.position {
                    instance.view.apply(envelope);
                    instance.position = envelope.position;
                    changed.insert(id.as_str(), ());
                }
            }
        }
        let to_save: Vec<(String, StoredView<V>)> =
            instances.into_iter().filter(|(id, _)| changed.contains_key(id.as_str())).collect();
        views.commit(self.name, checkpoint, last, to_save).await?;
        Ok(Some(last))
    }

    /// Processes batches until the checkpoint reaches the store's head as it was when called.
    pub async fn catch_up<S: EventStore, M: ViewManager>(
        &self,
        store: &S,
        views: &M,
    ) -> Result<Position, ProjectionError> {
        let head = store.head();
        let mut checkpoint = views.checkpoint(self.name).await?;
        while checkpoint < head {
            match self.run_batch(store, views, checkpoint).await? {
                Some(next) => checkpoint = next,
                None => break,
            }
        }
        Ok(checkpoint)
    }
}

/// Where a projection stands, as `GET /admin/projections` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The position its views reflect.
    pub position: Position,
    /// The store's head.
    pub head: Position,
    /// How many positions it is behind the head.
    pub lag_events: u64,
    /// The node running it, if any node does right now.
    pub owner: Option<String>,
}

/// Starts projections as background tasks on this node.
#[derive(Debug, Clone)]
pub struct ProjectionRunner {
    node_id: String,
}

/// How often a node that does not hold a projection's lease tries to take it. A dead
/// owner's lease is released when its database connection closes, so this bounds the time
/// to take over.
const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a node that does not run a projection reads its checkpoint, so that queries
/// on that node can wait for a position.
const OBSERVE_INTERVAL: Duration = Duration::from_millis(50);

impl ProjectionRunner {
    /// A runner for node `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self { node_id: node_id.into() }
    }

    /// Runs `projection` on this node alone (no other node competes for it) until the handle
    /// is stopped or dropped.
    pub fn spawn<S, M, E, V, L>(
        &self,
        projection: Projection<E, V, L>,
        store: Arc<S>,
        views: Arc<M>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        E: DomainEvent,
        V: View<E>,
        L: ViewLocator<E>,
    {
        let leases = Arc::new(LocalLeases);
        self.spawn_leased(projection, store, views, leases)
    }

    /// Runs `projection` whenever this node holds its lease: catches up from the checkpoint,
    /// then follows new commits, until the lease is lost. Without the lease it watches the
    /// checkpoint and retries the lease every second.
    pub fn spawn_leased<S, M, E, V, L, G>(
        &self,
        projection: Projection<E, V, L>,
        store: Arc<S>,
        views: Arc<M>,
        leases: Arc<G>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        E: DomainEvent,
        V: View<E>,
        L: ViewLocator<E>,
        G: Leases,
    {
        let (position_tx, position_rx) = watch::channel(Position::START);
        let (owner_tx, owner_rx) = watch::channel(None);
        let name = projection.name();
        let progress = Progress { position: position_tx, owner: owner_tx };
        let task = tokio::spawn(supervise(
            projection,
            store,
            views,
            leases,
            self.node_id.clone(),
            progress,
        ));
        ProjectionHandle { name, owner: owner_rx, position: position_rx, task }
    }
}

/// What a runner tells its handle.
struct Progress {
    position: watch::Sender<Position>,
    owner: watch::Sender<Option<String>>,
}

impl Progress {
    /// Moves the reported position forward (never back: checkpoints only grow).
    fn advance(&self, to: Position) {
        self.position.send_if_modified(|position| {
            let moved = to > *position;
            if moved {
                *position = to;
            }
            moved
        });
    }
}

async fn supervise<S, M, E, V, L, G>(
    projection: Projection<E, V, L>,
    store: Arc<S>,
    views: Arc<M>,
    leases: Arc<G>,
    node_id: String,
    progress: Progress,
) where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
    G: Leases,
{
    let name = projection.name();
    let projection = Arc::new(projection);
    let progress = Arc::new(progress);
    let mut panics = Backoff::default();
    loop {
        match leases.try_acquire(name).await {
            Ok(Some(lease)) => {
                tracing::info!(projection = name, node = %node_id, "running projection");
                progress.owner.send_replace(Some(node_id.clone()));
                // Its own task, so that a panic in a view or locator ends this run, not
                // the supervisor; the guard stops it if the supervisor itself is stopped.
                let run = {
                    let (projection, store, views) =
                        (projection.clone(), store.clone(), views.clone());
                    let progress = progress.clone();
                    tokio::spawn(async move {
                        follow(&projection, store.as_ref(), views.as_ref(), &progress).await;
                    })
                };
                let _stop_with_supervisor = AbortOnDrop(run.abort_handle());
                tokio::select! {
                    joined = run => match joined {
                        Err(error) if error.is_panic() => {
                            tracing::error!(projection = name, "projection panicked; restarting it");
                            progress.owner.send_replace(None);
                            drop(lease);
                            panics.wait(name, &ProjectionError::Panicked).await;
                            continue;
                        }
                        _ => return,
                    },
                    () = lease.lost() => {
                        tracing::warn!(projection = name, "lease lost; stopping the projection here");
                    }
                }
                progress.owner.send_replace(None);
            }
            Ok(None) => {
                // Another node runs it: follow its checkpoint until the next attempt.
                if let Ok(owner) = leases.owner(name).await {
                    progress.owner.send_replace(owner);
                }
                let next_attempt = tokio::time::Instant::now() + ACQUIRE_INTERVAL;
                while tokio::time::Instant::now() < next_attempt {
                    if let Ok(checkpoint) = views.checkpoint(name).await {
                        progress.advance(checkpoint);
                    }
                    tokio::time::sleep(OBSERVE_INTERVAL).await;
                }
            }
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot take the projection's lease");
                tokio::time::sleep(ACQUIRE_INTERVAL).await;
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the projection from its checkpoint, following new commits, forever.
async fn follow<S, M, E, V, L>(
    projection: &Projection<E, V, L>,
    store: &S,
    views: &M,
    progress: &Progress,
) where
    S: EventStore,
    M: ViewManager,
    E: DomainEvent,
    V: View<E>,
    L: ViewLocator<E>,
{
    let mut heads = store.subscribe();
    let mut backoff = Backoff::default();
    let mut checkpoint = None;
    loop {
        let from = match checkpoint {
            Some(from) => from,
            None => match views.checkpoint(projection.name()).await {
                // Views ahead of the log were built from another log (a store replaced
                // under its views); following from there would skip events silently.
                Ok(from) if from > store.head() => {
                    tracing::error!(
                        projection = projection.name(),
                        checkpoint = %from,
                        head = %store.head(),
                        "the views are ahead of the event log; clear them to rebuild from zero"
                    );
                    backoff.wait(projection.name(), &ProjectionError::AheadOfLog).await;
                    continue;
                }
                Ok(from) => {
                    progress.advance(from);
                    checkpoint = Some(from);
                    from
                }
                Err(error) => {
                    backoff.wait(projection.name(), &error.into()).await;
                    continue;
                }
            },
        };
        match projection.run_batch(store, views, from).await {
            Ok(Some(next)) => {
                backoff.reset();
                checkpoint = Some(next);
                progress.advance(next);
            }
            Ok(None) => {
                // Nothing after the checkpoint: sleep until the head moves past it.
                if heads.wait_for(|head| *head > from).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // Re-read the checkpoint after a failure: a fenced commit means it moved.
                checkpoint = None;
                backoff.wait(projection.name(), &error).await;
            }
        }
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    async fn wait(&mut self, projection: &str, error: &ProjectionError) {
        self.failures += 1;
        let delay =
            Duration::from_millis(50u64 << self.failures.min(7)).min(Duration::from_secs(5));
        tracing::warn!(projection, failures = self.failures, ?delay, %error, "projection batch failed; retrying");
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A running projection: its progress, and a way to wait for it.
pub struct ProjectionHandle {
    name: &'static str,
    owner: watch::Receiver<Option<String>>,
    position: watch::Receiver<Position>,
    task: JoinHandle<()>,
}

impl ProjectionHandle {
    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The position its views reflect now.
    pub fn position(&self) -> Position {
        *self.position.borrow()
    }

    /// Waits until the views reflect `target` or `timeout` passes; returns the position
    /// reached, `Err` with the position at the deadline when it was not reached.
    pub async fn wait_for(
        &self,
        target: Position,
        timeout: Duration,
    ) -> Result<Position, Position> {
        let mut position = self.position.clone();
        let reached = tokio::time::timeout(timeout, position.wait_for(|p| *p >= target)).await;
        match reached {
            Ok(Ok(reached)) => Ok(*reached),
            _ => Err(*self.position.borrow()),
        }
    }

    /// Where the projection stands relative to `head`.
    pub fn status(&self, head: Position) -> ProjectionStatus {
        let position = self.position();
        ProjectionStatus {
            name: self.name.to_owned(),
            position,
            head,
            lag_events: head.0.saturating_sub(position.0),
            owner: self.owner.borrow().clone(),
        }
    }

    /// Stops the projection. A batch in flight is either committed whole or not at all.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ProjectionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

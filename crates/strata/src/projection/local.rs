//! Node-local projections: a view each node keeps on its own (an embedded search index),
//! in storage that commits its checkpoint together with its changes.
//!
//! No lease, since every node keeps its own copy, and no view manager, since the storage
//! holds the checkpoint: a batch's changes and the position they reach are one commit, so a
//! crash never loses or doubles an event's changes, and a new node builds its copy from the
//! log. Listed with the projections (position, lag, failures in `/health`), so queries wait
//! on it with `min_position` like on any view.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use super::control::{ControlError, Operations, local_status};
use super::runner::{ProjectionRunner, Shared};
use super::{BoxFuture, ProjectionHandle, ProjectionStatus};
use crate::event::RecordedEvent;
use crate::store::EventStore;
use crate::stream::Position;

/// How many events one commit carries at most: more than arrive in one [`REST`] under load,
/// so that a view keeping up commits once per rest.
const BATCH: usize = 10_000;
/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait for a new commit's notice before looking at the log anyway.
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// How long a checkpoint past the log's head may wait for the log before it is a failure.
const AHEAD_GRACE: Duration = Duration::from_secs(10);
/// The shortest time from one commit's start to the next's while events trickle in and no
/// query waits for a position. A search index's usual refresh interval: each commit writes
/// and syncs a new segment that is merged later, and at 100 ms the index took a fifth of
/// serve's CPU under load; at one second, about 6% (docs/benchmarks.md, tenth round).
const REST: Duration = Duration::from_secs(1);

/// A view kept by this node alone, in storage that commits its own checkpoint.
pub trait LocalView: Send + Sync + 'static {
    /// The position of the last event whose changes are committed; `Position::START` for
    /// a new one.
    fn checkpoint(&self) -> impl Future<Output = Result<Position, String>> + Send;

    /// Applies `events` (consecutive, just after the checkpoint) and commits their changes
    /// with the checkpoint at the last one, at once: after a crash, all of them or none are
    /// in. An error means none are.
    fn commit(&self, events: Vec<RecordedEvent>)
    -> impl Future<Output = Result<(), String>> + Send;
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF)
}

struct Local<S, L> {
    name: &'static str,
    store: Arc<S>,
    view: Arc<L>,
    shared: Arc<Shared>,
}

impl<S: EventStore, L: LocalView> Local<S, L> {
    async fn follow(&self) {
        let mut head = self.store.subscribe();
        let mut failures = 0;
        // The checkpoint as this task last committed it; read from the storage at the
        // start and after a failure, when it may not be what the task thinks.
        let mut known = None;
        loop {
            let started = tokio::time::Instant::now();
            match self.pass(&mut known).await {
                Ok(applied) => {
                    failures = 0;
                    self.shared.set_failure(None);
                    if applied == 0 {
                        let _ = tokio::time::timeout(IDLE_LOOK, head.changed()).await;
                    } else if applied < BATCH {
                        // A commit of such storage costs far more than an event (an index
                        // commit writes and syncs files): under a steady trickle, gather
                        // events for a while rather than commit each few on their own.
                        self.rest(started + REST).await;
                    }
                }
                Err(error) => {
                    failures += 1;
                    known = None;
                    tracing::warn!(projection = self.name, %error, "local view failed; trying again");
                    self.shared.set_failure(Some(error));
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Waits until `until`, or only until a query waits for a position (its wait counts as
    /// one of the waiters; see `ProjectionHandle::awaited`).
    async fn rest(&self, until: tokio::time::Instant) {
        while self.shared.waiters.load(Ordering::Acquire) == 0 {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = self.shared.hurry.notified() => {}
            }
        }
    }

    /// One batch after `known` (read from the view when `None`, and moved to the batch's
    /// end); how many events it applied.
    async fn pass(&self, known: &mut Option<Position>) -> Result<usize, String> {
        let from = match *known {
            Some(position) => position,
            None => self.view.checkpoint().await?,
        };
        let mut head = self.store.head();
        if from > head {
            // This node may not have heard of the newest commits yet (on a shared database),
            // or a replica's copy is copying again what a power cut took: give the log a
            // moment to reach the checkpoint before calling it another log.
            let mut heads = self.store.subscribe();
            let _ = tokio::time::timeout(AHEAD_GRACE, heads.wait_for(|head| *head >= from)).await;
            head = self.store.head();
        }
        if from > head {
            return Err(format!(
                "its checkpoint {from} is past the log's head {head}: it was built from another \
                 log; delete its files and start the node to build it from this one"
            ));
        }
        self.shared.advance(from);
        let events = self.store.read_all(from, BATCH).await.map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|event| event.position) else { return Ok(0) };
        let count = events.len();
        self.view.commit(events).await?;
        *known = Some(last);
        self.shared.events_applied.fetch_add(count as u64, Ordering::Relaxed);
        self.shared.advance(last);
        Ok(count)
    }
}

struct LocalControl<S, L> {
    local: Arc<Local<S, L>>,
    node_id: String,
}

impl<S: EventStore, L: LocalView> Operations for LocalControl<S, L> {
    fn name(&self) -> &'static str {
        self.local.name
    }

    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ControlError>> {
        Box::pin(async move {
            let local = &self.local;
            let head = local.store.head();
            let position = *local.shared.position.borrow();
            let lag_seconds = if head > position {
                let oldest = local.store.read_all(position, 1).await?;
                oldest.first().map_or(0.0, |event| {
                    let age = (Utc::now() - event.metadata.recorded_at).num_milliseconds();
                    age.max(0) as f64 / 1000.0
                })
            } else {
                0.0
            };
            let failure = local.shared.failure();
            Ok(local_status(local.name, &self.node_id, (position, head), lag_seconds, failure))
        })
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<(), ControlError>> {
        let name = self.local.name.to_owned();
        Box::pin(async move { Err(ControlError::NodeLocal(name)) })
    }
}

impl ProjectionRunner {
    /// Keeps `view` up to date with `store` on this node, from the checkpoint the view
    /// holds (see the module's documentation). The handle lists it with the projections.
    pub fn spawn_local<S, L>(
        &self,
        name: &'static str,
        view: Arc<L>,
        store: Arc<S>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        L: LocalView,
    {
        let shared = Arc::new(Shared::new());
        shared.owner.send_replace(Some(self.node_id().to_owned()));
        let local = Arc::new(Local { name, store, view, shared: shared.clone() });
        let task = tokio::spawn({
            let local = local.clone();
            async move { local.follow().await }
        });
        let control = LocalControl { local, node_id: self.node_id().to_owned() };
        ProjectionHandle::new(name, shared, Arc::new(control), task)
    }
}

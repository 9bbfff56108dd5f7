//! Followers: a node that keeps a copy of another deployment's log, event by event, in its
//! own store, so that its projections build the same views without the command side. The
//! counterpart of a delivery: what one deployment's delivery sends, a replica's follower
//! takes.
//!
//! The follower asks its [`Source`] for the events after its store's head and appends them
//! in order, each with the version it had upstream. Positions are dense in every store, so
//! an event lands at the position it had upstream, and `min_position` means the same on the
//! replica as on the writer. An event the store already holds is never asked for again:
//! the store's head is the follower's checkpoint, written in the same transaction as the
//! events, so a crash loses or doubles nothing.
//!
//! It is listed with the projections: its position is the store's head, its lag what the
//! source says is still to come, and a failing source shows in `/health` like a failing
//! projection.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::control::{ControlError, Operations, local_status};
use super::runner::{ProjectionRunner, Shared};
use super::{BoxFuture, ProjectionHandle, ProjectionStatus};
use crate::event::{NewEvent, RecordedEvent};
use crate::store::EventStore;
use crate::stream::{ExpectedVersion, Position, Version};

/// How many events one pull asks for at most.
const BATCH: usize = 1000;
/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Events the source handed over, and how many more it knows of.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Consecutive events, from the position asked after; empty when none came in time.
    pub events: Vec<RecordedEvent>,
    /// How many events the source holds beyond these (0 when caught up).
    pub behind: u64,
}

/// Where a follower takes its events from: another deployment's log, as delivered.
pub trait Source: Send + 'static {
    /// The events after `after`, in position order and consecutive from `after + 1`, at
    /// most `max`. Waits a while (about a second) for the first, and answers with none if
    /// none came. Implementations bound every wait of their own.
    fn pull(
        &mut self,
        after: Position,
        max: usize,
    ) -> impl Future<Output = Result<Pulled, String>> + Send;
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF)
}

/// What a follower knows beyond its store's head, for its status.
#[derive(Default)]
struct Progress {
    behind: AtomicU64,
    /// When the newest event appended was recorded upstream.
    newest: Mutex<Option<DateTime<Utc>>>,
}

struct Follower<S> {
    name: &'static str,
    store: Arc<S>,
    shared: Arc<Shared>,
    progress: Progress,
}

impl<S: EventStore> Follower<S> {
    async fn follow(&self, mut source: impl Source) {
        let mut failures = 0;
        loop {
            let after = self.store.head();
            self.shared.advance(after);
            let outcome = match source.pull(after, BATCH).await {
                Ok(pulled) => self.append(after, pulled).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    failures = 0;
                    self.shared.set_failure(None);
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(follower = self.name, %error, "following failed; trying again");
                    self.shared.set_failure(Some(error));
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Appends `pulled`'s events after `after`, consecutive events of one stream together;
    /// those after a hole in the positions are refused.
    async fn append(&self, after: Position, mut pulled: Pulled) -> Result<(), String> {
        self.progress.behind.store(pulled.behind, Ordering::Relaxed);
        let hole = pulled
            .events
            .iter()
            .zip(after.0 + 1..)
            .position(|(event, due)| event.position.0 != due)
            .map(|at| {
                let handed = pulled.events[at].position;
                pulled.events.truncate(at);
                format!(
                    "the source handed position {handed} where {} was due",
                    after.0 + 1 + at as u64
                )
            });
        let mut events = pulled.events.into_iter().peekable();
        while let Some(first) = events.next() {
            let (stream, version, at) = (first.stream.clone(), first.version, first.position);
            let mut run = vec![first];
            while let Some(next) = events.next_if(|next| next.stream == stream) {
                run.push(next);
            }
            let (count, recorded_at) = (run.len(), run[run.len() - 1].metadata.recorded_at);
            let batch: Vec<NewEvent> = run.into_iter().map(NewEvent::from).collect();
            let previous = Version(version.0.saturating_sub(1));
            let outcome = self
                .store
                .append(&stream, ExpectedVersion::of(previous), batch)
                .await
                .map_err(|error| format!("appending position {at} ({stream}): {error}"))?;
            if outcome.first_position != at {
                // Only another writer of this store could cause it; say so rather than
                // serve views whose positions mean something else than the writer's.
                return Err(format!(
                    "position {at} ({stream}) landed at {} in this store: it has another writer",
                    outcome.first_position
                ));
            }
            self.shared.events_applied.fetch_add(count as u64, Ordering::Relaxed);
            *self.progress.newest.lock().unwrap_or_else(|e| e.into_inner()) = Some(recorded_at);
            self.shared.advance(outcome.last_position);
        }
        hole.map_or(Ok(()), Err)
    }
}

struct FollowerControl<S> {
    follower: Arc<Follower<S>>,
    node_id: String,
}

impl<S: EventStore> Operations for FollowerControl<S> {
    fn name(&self) -> &'static str {
        self.follower.name
    }

    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ControlError>> {
        Box::pin(async move {
            let follower = &self.follower;
            let position = follower.store.head();
            let behind = follower.progress.behind.load(Ordering::Relaxed);
            let newest = *follower.progress.newest.lock().unwrap_or_else(|e| e.into_inner());
            // The next event to come is newer than the newest appended: its age is at most
            // that one's.
            let lag_seconds = match newest {
                Some(newest) if behind > 0 => {
                    (Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0
                }
                _ => 0.0,
            };
            let span = (position, Position(position.0 + behind));
            let failure = follower.shared.failure();
            Ok(local_status(follower.name, &self.node_id, span, lag_seconds, failure))
        })
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<(), ControlError>> {
        let name = self.follower.name.to_owned();
        Box::pin(async move { Err(ControlError::KeepsNoViews(name)) })
    }
}

impl ProjectionRunner {
    /// Copies every event `source` hands over into `store`, in order and at the position it
    /// had upstream (see the module's documentation); `store` must have no other writer.
    /// The handle lists it with the projections.
    pub fn spawn_follower<S, F>(
        &self,
        name: &'static str,
        source: F,
        store: Arc<S>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        F: Source,
    {
        let shared = Arc::new(Shared::new());
        shared.owner.send_replace(Some(self.node_id().to_owned()));
        let follower = Arc::new(Follower {
            name,
            store,
            shared: shared.clone(),
            progress: Progress::default(),
        });
        let task = tokio::spawn({
            let follower = follower.clone();
            async move { follower.follow(source).await }
        });
        let control = FollowerControl { follower, node_id: self.node_id().to_owned() };
        ProjectionHandle::new(name, shared, Arc::new(control), task)
    }
}

//! Deliveries: every event of the log handed, in order, to something outside the process
//! (a message broker, another service), at least once and never skipped.
//!
//! A delivery is run like a projection: on one node at a time under its lease, with a
//! checkpoint stored by the view manager and moved with the same fence, so it shows in the
//! projections' list, lag, `/health` and metrics like any other. It keeps no views, so an
//! operator cannot retry, skip or rebuild it. Each batch is handed to the [`Outlet`], which
//! answers only once the receiver has acknowledged all of it; then the checkpoint moves. A
//! node that dies in between leaves the checkpoint behind the acknowledged events, and the
//! next owner hands them again: receivers drop them by event id (the outlet's job to say).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::control::{ControlError, Operations};
use super::runner::{ProjectionRunner, Shared};
use super::{BoxFuture, ProjectionHandle, ProjectionStatus, status_of};
use crate::event::RecordedEvent;
use crate::lease::{Lease, Leases};
use crate::store::EventStore;
use crate::view_manager::{Commit, Slot, ViewManager};

/// How many events one hand-over carries at most.
const BATCH: usize = 500;
/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a node without the lease tries to take it, and reads the owner's checkpoint.
const ACQUIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a delivery hands events.
pub trait Outlet: Send + Sync + 'static {
    /// Hands `events` (in position order, consecutive) over, and resolves once the receiver
    /// holds every one of them. An error means some may have arrived: they are handed again.
    /// Implementations bound their own waits.
    fn deliver(&self, events: &[RecordedEvent]) -> impl Future<Output = Result<(), String>> + Send;
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF)
}

struct Delivery<S, M, O> {
    name: &'static str,
    store: Arc<S>,
    views: Arc<M>,
    outlet: Arc<O>,
    shared: Arc<Shared>,
}

impl<S: EventStore, M: ViewManager, O: Outlet> Delivery<S, M, O> {
    /// Hands over everything after the checkpoint, then waits for new commits; returns only
    /// when stopped.
    async fn follow(&self) {
        let mut head = self.store.subscribe();
        let mut failures = 0;
        loop {
            match self.pass().await {
                Ok(true) => {
                    failures = 0;
                    self.shared.set_failure(None);
                }
                Ok(false) => {
                    failures = 0;
                    self.shared.set_failure(None);
                    // Nothing new: wait for the next commit (a slow look too, in case a commit's
                    // notice is lost on a store shared by several nodes).
                    let _ = tokio::time::timeout(ACQUIRE_INTERVAL, head.changed()).await;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(delivery = self.name, %error, "delivery failed; trying again");
                    self.shared.set_failure(Some(error));
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// One batch: read, hand over, move the checkpoint. `Ok(false)` when there was nothing.
    async fn pass(&self) -> Result<bool, String> {
        let from = self.views.checkpoint(self.name, Slot::Live).await.map_err(|e| e.to_string())?;
        let head = self.store.head();
        // A checkpoint past the head belongs to another log (a store restored or replaced
        // under it): going on from there would skip the events up to it without a word.
        if from.position > head {
            return Err(format!(
                "the checkpoint {} is past the log's head {head}: the store was replaced under \
                 it; nothing is delivered until an operator resets it",
                from.position
            ));
        }
        self.shared.set_to(from.position);
        let events = self.store.read_all(from.position, BATCH).await.map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|event| event.position) else { return Ok(false) };
        self.outlet.deliver(&events).await?;
        let commit = Commit::<()>::new(from, last);
        self.views.commit(self.name, Slot::Live, commit).await.map_err(|e| e.to_string())?;
        self.shared
            .events_applied
            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.set_to(last);
        Ok(true)
    }

    /// Follows the owner's checkpoint until `until`, so this node's status stays current.
    async fn observe(&self, until: Instant) {
        while Instant::now() < until {
            if let Ok(checkpoint) = self.views.checkpoint(self.name, Slot::Live).await {
                self.shared.set_to(checkpoint.position);
            }
            tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(250))).await;
        }
    }
}

async fn supervise<S, M, O, G>(delivery: Arc<Delivery<S, M, O>>, leases: Arc<G>, node_id: String)
where
    S: EventStore,
    M: ViewManager,
    O: Outlet,
    G: Leases,
{
    let name = delivery.name;
    while let Err(error) = delivery.views.prepare(name, &[], 1).await {
        delivery.shared.set_failure(Some(error.to_string()));
        tokio::time::sleep(ACQUIRE_INTERVAL).await;
    }
    loop {
        match leases.try_acquire(name).await {
            Ok(Some(lease)) => {
                tracing::info!(delivery = name, node = %node_id, "delivering events");
                delivery.shared.owner.send_replace(Some(node_id.clone()));
                tokio::select! {
                    () = delivery.follow() => {}
                    () = lease.lost() => {
                        tracing::warn!(delivery = name, "lease lost; stopping the delivery here");
                    }
                }
                delivery.shared.owner.send_replace(None);
            }
            Ok(None) => {
                if let Ok(owner) = leases.owner(name).await {
                    delivery.shared.owner.send_replace(owner);
                }
                delivery.observe(Instant::now() + ACQUIRE_INTERVAL).await;
            }
            Err(error) => {
                tracing::warn!(delivery = name, %error, "cannot take the delivery's lease");
                tokio::time::sleep(ACQUIRE_INTERVAL).await;
            }
        }
    }
}

struct DeliveryControl<S, M, O> {
    delivery: Arc<Delivery<S, M, O>>,
}

impl<S: EventStore, M: ViewManager, O: Outlet> Operations for DeliveryControl<S, M, O> {
    fn name(&self) -> &'static str {
        self.delivery.name
    }

    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ControlError>> {
        Box::pin(async move {
            let (delivery, shared) = (&self.delivery, &self.delivery.shared);
            let (owner, failure, known) =
                (shared.owner.borrow().clone(), shared.failure(), *shared.position.borrow());
            status_of(
                delivery.name,
                delivery.store.as_ref(),
                delivery.views.as_ref(),
                owner,
                failure,
                known,
            )
            .await
        })
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<(), ControlError>> {
        let name = self.delivery.name.to_owned();
        Box::pin(async move { Err(ControlError::KeepsNoViews(name)) })
    }
}

impl ProjectionRunner {
    /// Delivers every event of `store` to `outlet` whenever this node holds the lease
    /// `name`, keeping its checkpoint in `views` (see the module's documentation). The
    /// handle lists it with the projections.
    pub fn spawn_delivery<S, M, O, G>(
        &self,
        name: &'static str,
        outlet: Arc<O>,
        store: Arc<S>,
        views: Arc<M>,
        leases: Arc<G>,
    ) -> ProjectionHandle
    where
        S: EventStore,
        M: ViewManager,
        O: Outlet,
        G: Leases,
    {
        let shared = Arc::new(Shared::new());
        let delivery = Arc::new(Delivery { name, store, views, outlet, shared: shared.clone() });
        let task = tokio::spawn(supervise(delivery.clone(), leases, self.node_id().to_owned()));
        ProjectionHandle::new(name, shared, Arc::new(DeliveryControl { delivery }), task)
    }
}

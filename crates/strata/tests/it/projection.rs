//! The projection runner: catch-up, live following, read-your-writes waits, and exactly-once
//! effect when the runner dies between batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::bus::CommandContext;
use strata::projection::Projection;
use strata::{
    BusConfig, CommandBus, InMemoryEventStore, InMemoryViewManager, Position, ProjectionRunner,
    StoredView, ViewError, ViewManager,
};

use crate::counter::{Counter, CounterCommand, CounterEvent, OwnerTotal, locate_owner};

type OwnerProjection =
    Projection<CounterEvent, OwnerTotal, fn(&strata::Envelope<CounterEvent>, &mut Vec<String>)>;

fn owners() -> OwnerProjection {
    Projection::new("owner_totals", locate_owner as fn(&_, &mut Vec<String>))
}

async fn fill(bus: &CommandBus<InMemoryEventStore>, owners: usize, counters: usize) {
    let ctx = CommandContext::new("fill");
    for o in 0..owners {
        for c in 0..counters {
            let id = format!("owner{o}.c{c}");
            let open = CounterCommand::Open { owner: format!("owner{o}") };
            bus.execute::<Counter>(&id, open, &ctx).await.unwrap();
            let inc = CounterCommand::Increment { amounts: vec![1, 2, 3] };
            bus.execute::<Counter>(&id, inc, &ctx).await.unwrap();
        }
    }
}

async fn view_of<M: ViewManager>(views: &M, owner: &str) -> StoredView<OwnerTotal> {
    views.get::<OwnerTotal>("owner_totals", owner).await.unwrap().unwrap()
}

/// A view manager that dies (refuses every commit) after a number of commits, as a process
/// killed between batches would.
struct DiesAfter {
    inner: Arc<InMemoryViewManager>,
    commits_left: AtomicUsize,
}

impl ViewManager for DiesAfter {
    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, StoredView<V>>, ViewError> {
        self.inner.load(projection, ids).await
    }
    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        self.inner.get(projection, id).await
    }
    async fn checkpoint(&self, projection: &str) -> Result<Position, ViewError> {
        self.inner.checkpoint(projection).await
    }
    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        from: Position,
        to: Position,
        views: Vec<(String, StoredView<V>)>,
    ) -> Result<(), ViewError> {
        let left = self.commits_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(ViewError::Backend("the process died".into()));
        }
        self.commits_left.store(left - 1, Ordering::SeqCst);
        self.inner.commit(projection, from, to, views).await
    }
}

#[tokio::test]
async fn a_runner_that_dies_between_batches_resumes_without_repeating_or_skipping() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    fill(&bus, 3, 10).await; // 3 owners x 10 counters x 4 events = 120 events

    let survived = Arc::new(InMemoryViewManager::new());
    let dying = DiesAfter { inner: survived.clone(), commits_left: AtomicUsize::new(4) };
    let small = owners().with_batch_size(7);
    let mut checkpoint = Position::START;
    loop {
        match small.run_batch(store.as_ref(), &dying, checkpoint).await {
            Ok(Some(next)) => checkpoint = next,
            Ok(None) => panic!("the runner should die before the end"),
            Err(_) => break,
        }
    }
    assert_eq!(survived.checkpoint("owner_totals").await.unwrap(), Position(28));

    // A new process resumes from the committed checkpoint.
    let resumed = owners().with_batch_size(7).catch_up(store.as_ref(), survived.as_ref()).await;
    assert_eq!(resumed.unwrap(), Position(120));

    let rebuilt = InMemoryViewManager::new();
    owners().catch_up(store.as_ref(), &rebuilt).await.unwrap();
    for owner in ["owner0", "owner1", "owner2"] {
        let resumed = view_of(survived.as_ref(), owner).await;
        assert_eq!(resumed, view_of(&rebuilt, owner).await, "{owner}: resumed equals rebuilt");
        assert_eq!(resumed.view.events, 40, "{owner}: every event applied exactly once");
        assert_eq!(resumed.view.total, 60);
    }
}

#[tokio::test]
async fn a_spawned_runner_follows_live_commits_and_answers_waits() {
    let store = Arc::new(InMemoryEventStore::new());
    let views = Arc::new(InMemoryViewManager::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    fill(&bus, 1, 2).await;
    let handle = ProjectionRunner::new("node-a").spawn(owners(), store.clone(), views.clone());
    handle.wait_for(Position(8), Duration::from_secs(5)).await.unwrap();

    let ctx = CommandContext::new("live");
    let inc = CounterCommand::Increment { amounts: vec![10] };
    let outcome = bus.execute::<Counter>("owner0.c0", inc, &ctx).await.unwrap();
    let target = outcome.position.unwrap();
    let reached = handle.wait_for(target, Duration::from_secs(5)).await.unwrap();
    assert!(reached >= target);
    assert_eq!(view_of(views.as_ref(), "owner0").await.view.total, 22);

    let status = handle.status(store_head(&store));
    assert_eq!((status.lag_events, status.owner.as_str()), (0, "node-a"));
    let beyond = handle.wait_for(Position(target.0 + 1), Duration::from_millis(50)).await;
    assert_eq!(beyond, Err(target), "a wait for a position never written times out");
}

fn store_head(store: &InMemoryEventStore) -> Position {
    strata::EventStore::head(store)
}

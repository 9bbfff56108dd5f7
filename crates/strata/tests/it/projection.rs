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
    assert_eq!((status.lag_events, status.owner.as_deref()), (0, Some("node-a")));
    let beyond = handle.wait_for(Position(target.0 + 1), Duration::from_millis(50)).await;
    assert_eq!(beyond, Err(target), "a wait for a position never written times out");
}

fn store_head(store: &InMemoryEventStore) -> Position {
    strata::EventStore::head(store)
}

/// Leases that a test hands out and takes back, as a database would when a node dies.
#[derive(Default)]
struct TestLeases {
    holder: std::sync::Mutex<Option<(String, tokio::sync::watch::Sender<bool>)>>,
}

struct TestLease(tokio::sync::watch::Receiver<bool>);

impl strata::Lease for TestLease {
    async fn lost(&self) {
        let mut lost = self.0.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

/// One node's view of the shared [`TestLeases`].
struct NodeLeases {
    shared: Arc<TestLeases>,
    node: &'static str,
}

impl strata::Leases for NodeLeases {
    type Lease = TestLease;

    async fn try_acquire(&self, _name: &str) -> Result<Option<TestLease>, strata::LeaseError> {
        let mut holder = self.shared.holder.lock().unwrap();
        if holder.is_some() {
            return Ok(None);
        }
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        *holder = Some((self.node.to_owned(), lost_tx));
        Ok(Some(TestLease(lost_rx)))
    }

    async fn owner(&self, _name: &str) -> Result<Option<String>, strata::LeaseError> {
        Ok(self.shared.holder.lock().unwrap().as_ref().map(|(node, _)| node.clone()))
    }
}

impl TestLeases {
    /// The holder's node dies: its lease is lost and free for others.
    fn kill_holder(&self) -> String {
        let (node, lost) = self.holder.lock().unwrap().take().unwrap();
        lost.send_replace(true);
        node
    }
}

#[tokio::test]
async fn a_projection_moves_to_another_node_when_its_lease_is_lost() {
    let store = Arc::new(InMemoryEventStore::new());
    let views = Arc::new(InMemoryViewManager::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let shared = Arc::new(TestLeases::default());
    let leases = |node| Arc::new(NodeLeases { shared: shared.clone(), node });
    let a = ProjectionRunner::new("a").spawn_leased(
        owners(),
        store.clone(),
        views.clone(),
        leases("a"),
    );
    let b = ProjectionRunner::new("b").spawn_leased(
        owners(),
        store.clone(),
        views.clone(),
        leases("b"),
    );
    fill(&bus, 1, 2).await;
    a.wait_for(Position(8), Duration::from_secs(5)).await.unwrap();
    // The node without the lease follows the checkpoint, so waits work there too.
    b.wait_for(Position(8), Duration::from_secs(5)).await.unwrap();
    let first = shared.holder.lock().unwrap().as_ref().map(|(node, _)| node.to_owned()).unwrap();
    assert_eq!(a.status(Position(8)).owner.as_deref(), Some(first.as_str()));
    assert_eq!(b.status(Position(8)).owner.as_deref(), Some(first.as_str()));

    // The holder's node dies: its runner stops, and then its lease is released.
    let holder = if first == "a" { &a } else { &b };
    holder.stop();
    let dead = shared.kill_holder();
    let ctx = CommandContext::new("after the handover");
    for _ in 0..4 {
        let one = CounterCommand::Increment { amounts: vec![1] };
        bus.execute::<Counter>("owner0.c0", one, &ctx).await.unwrap();
    }
    let survivor = if dead == "a" { &b } else { &a };
    survivor.wait_for(Position(12), Duration::from_secs(10)).await.unwrap();
    let now_owner = survivor.status(Position(12)).owner;
    assert!(now_owner.is_some() && now_owner.as_deref() != Some(dead.as_str()), "{now_owner:?}");
    let view = view_of(views.as_ref(), "owner0").await;
    assert_eq!(view.view.events, 12, "every event applied once across the handover");
}

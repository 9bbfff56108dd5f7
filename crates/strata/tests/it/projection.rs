//! The projection runner: catch-up, live following, read-your-writes waits, exactly-once
//! effect when the runner dies between batches, and a handover between nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::bus::CommandContext;
use strata::projection::Projection;
use strata::{
    BusConfig, CommandBus, EventStore, InMemoryEventStore, InMemoryViewManager, Position,
    ProjectionRunner, RecordedEvent, Slot, StoredView, ViewManager,
};
use strata_testkit::DyingViews;
use strata_testkit::leases::SharedLeases;

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

#[tokio::test]
async fn a_runner_that_dies_between_batches_resumes_without_repeating_or_skipping() {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    fill(&bus, 3, 10).await; // 3 owners x 10 counters x 4 events = 120 events

    let survived = Arc::new(InMemoryViewManager::new());
    let dying = Arc::new(DyingViews::new(survived.clone()));
    dying.die_after(4);
    let died = owners().with_batch_size(7).catch_up(store.clone(), dying).await;
    assert!(died.is_err(), "the runner dies before the end");
    let survived_at = survived.checkpoint("owner_totals", Slot::Live).await.unwrap();
    assert_eq!(survived_at.position, Position(28), "four batches of seven committed");

    // A new process resumes from the committed checkpoint.
    let resumed = owners().with_batch_size(7).catch_up(store.clone(), survived.clone()).await;
    assert_eq!(resumed.unwrap(), Position(120));

    let rebuilt = Arc::new(InMemoryViewManager::new());
    owners().catch_up(store.clone(), rebuilt.clone()).await.unwrap();
    for owner in ["owner0", "owner1", "owner2"] {
        let resumed = view_of(survived.as_ref(), owner).await;
        assert_eq!(
            resumed,
            view_of(rebuilt.as_ref(), owner).await,
            "{owner}: resumed equals rebuilt"
        );
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

    let status = handle.status().await.unwrap();
    assert_eq!(
        (status.lag_events, status.lag_seconds, status.owner.as_deref()),
        (0, 0.0, Some("node-a"))
    );
    let beyond = handle.wait_for(Position(target.0 + 1), Duration::from_millis(50)).await;
    assert_eq!(beyond, Err(target), "a wait for a position never written times out");
}

/// After a small batch the runner rests before it reads again (under load it commits fewer,
/// larger batches), but a query that waits ends the rest: it waits for the commit only.
#[tokio::test(start_paused = true)]
async fn a_waiting_query_is_not_kept_waiting_by_the_rest_after_a_small_batch() {
    let store = Arc::new(InMemoryEventStore::new());
    let views = Arc::new(DyingViews::new(Arc::new(InMemoryViewManager::new())));
    let commit = Duration::from_millis(10);
    views.land_late(commit);
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let handle = ProjectionRunner::new("node-a").spawn(owners(), store.clone(), views.clone());
    let ctx = CommandContext::new("live");
    let inc = || CounterCommand::Increment { amounts: vec![1] };
    let open = CounterCommand::Open { owner: "owner0".into() };
    bus.execute::<Counter>("owner0.c0", open, &ctx).await.unwrap();

    // Nobody waits: the runner commits, then rests (nine times the batch, at most 50 ms),
    // so an event appended right after the commit is committed only after the rest.
    let committed = |target: Position| {
        let handle = &handle;
        async move {
            let started = tokio::time::Instant::now();
            while handle.position() < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started.elapsed()
        }
    };
    committed(store.head()).await;
    bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap();
    let unwaited = committed(store.head()).await;
    assert!(unwaited >= commit + Duration::from_millis(15), "rested: {unwaited:?}");

    // A query waits: the runner reads at once, and the wait is the commit's.
    committed(store.head()).await;
    let target = bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap().position;
    let started = tokio::time::Instant::now();
    handle.wait_for(target.unwrap(), Duration::from_secs(5)).await.unwrap();
    let waited = started.elapsed();
    assert!(waited < commit + Duration::from_millis(5), "not kept waiting: {waited:?}");
    assert_eq!(view_of(views.as_ref(), "owner0").await.view.total, 2);

    // A request that awaits what the projection does next, with no position to wait for
    // (a saga's outcome), holds the guard: a rest begun before it ends, and none begins.
    committed(store.head()).await;
    bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap();
    committed(store.head()).await;
    let awaited = handle.awaited();
    for _ in 0..2 {
        bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap();
        let prompt = committed(store.head()).await;
        assert!(prompt < commit + Duration::from_millis(5), "awaited, not resting: {prompt:?}");
    }
    // Dropped, it no longer counts: the next small batch rests again.
    drop(awaited);
    bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap();
    committed(store.head()).await;
    bus.execute::<Counter>("owner0.c0", inc(), &ctx).await.unwrap();
    let unwaited = committed(store.head()).await;
    assert!(unwaited >= commit + Duration::from_millis(15), "rests again: {unwaited:?}");
}

/// A node-local view (a search index) keeps what it reads for a second before it commits
/// under a trickle of events, unless a query waits for a position.
#[tokio::test(start_paused = true)]
async fn a_local_view_gathers_events_for_a_second_unless_a_query_waits() {
    struct SlowView {
        position: std::sync::Mutex<Position>,
        commits: AtomicUsize,
    }
    impl strata::LocalView for SlowView {
        async fn checkpoint(&self) -> Result<Position, String> {
            Ok(*self.position.lock().unwrap())
        }
        async fn commit(&self, events: Vec<RecordedEvent>) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            *self.position.lock().unwrap() = events.last().unwrap().position;
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let store = Arc::new(InMemoryEventStore::new());
    let view = Arc::new(SlowView { position: Default::default(), commits: AtomicUsize::new(0) });
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let ctx = CommandContext::new("local");
    let open = CounterCommand::Open { owner: "owner0".into() };
    bus.execute::<Counter>("owner0.c0", open, &ctx).await.unwrap();
    let handle = ProjectionRunner::new("node-a").spawn_local("slow", view.clone(), store.clone());
    handle.wait_for(store.head(), Duration::from_secs(5)).await.unwrap();

    // Events that nobody waits for, a few milliseconds apart, go into one commit a second
    // after the last one started.
    let started = tokio::time::Instant::now();
    let commits = view.commits.load(Ordering::SeqCst);
    for _ in 0..20 {
        let inc = CounterCommand::Increment { amounts: vec![1] };
        bus.execute::<Counter>("owner0.c0", inc, &ctx).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while handle.position() < store.head() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "gathered: {:?}", started.elapsed());
    assert!(view.commits.load(Ordering::SeqCst) - commits <= 2, "few commits");

    // A query waits: the rest ends, and the wait is the commit's.
    let inc = CounterCommand::Increment { amounts: vec![1] };
    let target = bus.execute::<Counter>("owner0.c0", inc, &ctx).await.unwrap().position.unwrap();
    let started = tokio::time::Instant::now();
    handle.wait_for(target, Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(15), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn lag_counts_the_events_and_the_age_of_the_oldest_one_not_applied() {
    let store = Arc::new(InMemoryEventStore::new());
    let views = Arc::new(InMemoryViewManager::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    fill(&bus, 1, 1).await;
    let handle = ProjectionRunner::new("node-a").spawn(owners(), store.clone(), views.clone());
    handle.wait_for(Position(4), Duration::from_secs(5)).await.unwrap();
    handle.stop();
    // A backlog of known size and age: 5 events, the oldest recorded 90 seconds ago.
    let mut ctx = CommandContext::new("backlog");
    ctx.command_id = "old".to_owned();
    for n in 0..5 {
        let inc = CounterCommand::Increment { amounts: vec![n] };
        bus.execute::<Counter>("owner0.c0", inc, &ctx).await.unwrap();
    }
    let stopped = ProjectionRunner::new("node-b");
    let status = {
        // A handle that is stopped at once: it reports without moving the checkpoint.
        let idle =
            stopped.spawn(owners(), Arc::new(Tampered::new(store.clone(), 90)), views.clone());
        idle.stop();
        idle.status().await.unwrap()
    };
    assert_eq!((status.position, status.head, status.lag_events), (Position(4), Position(9), 5));
    assert!((89.0..120.0).contains(&status.lag_seconds), "lag_seconds {}", status.lag_seconds);
    assert_eq!(status.status, strata::ProjectionState::Stopped);
}

#[tokio::test]
async fn a_projection_moves_to_another_node_when_its_lease_is_lost() {
    let store = Arc::new(InMemoryEventStore::new());
    let views = Arc::new(InMemoryViewManager::new());
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let leases = SharedLeases::new();
    let a = ProjectionRunner::new("a").spawn_leased(
        owners(),
        store.clone(),
        views.clone(),
        leases.node("a"),
    );
    let b = ProjectionRunner::new("b").spawn_leased(
        owners(),
        store.clone(),
        views.clone(),
        leases.node("b"),
    );
    fill(&bus, 1, 2).await;
    a.wait_for(Position(8), Duration::from_secs(5)).await.unwrap();
    // The node without the lease follows the checkpoint, so waits work there too.
    b.wait_for(Position(8), Duration::from_secs(5)).await.unwrap();
    let first = leases.holder("owner_totals").unwrap();
    assert_eq!(a.status().await.unwrap().owner.as_deref(), Some(first.as_str()));
    assert_eq!(b.status().await.unwrap().owner.as_deref(), Some(first.as_str()));

    // The holder's node dies: its runner stops, and then its lease is released.
    let holder = if first == "a" { &a } else { &b };
    holder.stop();
    let dead = leases.kill_holder("owner_totals").unwrap();
    let ctx = CommandContext::new("after the handover");
    for _ in 0..4 {
        let one = CounterCommand::Increment { amounts: vec![1] };
        bus.execute::<Counter>("owner0.c0", one, &ctx).await.unwrap();
    }
    let survivor = if dead == "a" { &b } else { &a };
    survivor.wait_for(Position(12), Duration::from_secs(10)).await.unwrap();
    let now_owner = survivor.status().await.unwrap().owner;
    assert!(now_owner.is_some() && now_owner.as_deref() != Some(dead.as_str()), "{now_owner:?}");
    let view = view_of(views.as_ref(), "owner0").await;
    assert_eq!(view.view.events, 12, "every event applied once across the handover");
}

/// Regression: instances a runner kept from its last batch outlived a failed read, so an
/// operator's retry in between was undone (the next event went to a parked list the
/// instance no longer had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_between_failing_reads_is_not_undone_by_instances_the_runner_kept() {
    use strata_testkit::tally;
    let token = uuid::Uuid::now_v7().to_string();
    let store = Arc::new(Tampered::new(Arc::new(InMemoryEventStore::new()), 0));
    let views = Arc::new(InMemoryViewManager::new());
    let stream = |id: &str| strata::StreamId::new(tally::TALLY, id);
    let append = |id: &'static str, event| {
        let store = store.clone();
        async move {
            strata::EventStore::append(
                store.as_ref(),
                &stream(id),
                strata::ExpectedVersion::Any,
                vec![event],
            )
            .await
            .unwrap()
        }
    };
    append("t1", tally::poisoned(10, &token)).await;
    let handle = ProjectionRunner::new("node").spawn(
        tally::projection("warm_after_blip", false),
        store.clone(),
        views.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.parked().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "t1 never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    store.failing.store(true, Ordering::SeqCst);
    append("t2", tally::added(1)).await;
    while store.failed.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the runner never read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally::fix(&token);
    assert_eq!(handle.retry("t1").await.unwrap().parked, None, "the operator's retry releases t1");
    let last = append("t1", tally::added(5)).await.last_position;
    store.failing.store(false, Ordering::SeqCst);

    handle.wait_for(last, Duration::from_secs(10)).await.unwrap();
    let t1 = views.get::<tally::Tally>("warm_after_blip", "t1").await.unwrap().unwrap();
    assert_eq!(
        (t1.view.total, t1.parked),
        (15, None),
        "the event after the retry applied to the released t1"
    );
    assert!(handle.parked().await.unwrap().is_empty());
}

/// An in-memory event store tampered with for a test: its events read as recorded
/// `seconds_ago` earlier than they were (a backlog of known age without waiting for it), and
/// its log reads fail while `failing` is set (a database blip).
struct Tampered {
    inner: Arc<InMemoryEventStore>,
    seconds_ago: i64,
    failing: std::sync::atomic::AtomicBool,
    failed: AtomicUsize,
}

impl Tampered {
    fn new(inner: Arc<InMemoryEventStore>, seconds_ago: i64) -> Self {
        Self {
            inner,
            seconds_ago,
            failing: std::sync::atomic::AtomicBool::new(false),
            failed: AtomicUsize::new(0),
        }
    }
}

impl strata::EventStore for Tampered {
    async fn append_claimed(
        &self,
        stream: &strata::StreamId,
        expected: strata::ExpectedVersion,
        events: Vec<strata::NewEvent>,
        claim: Option<&strata::IdempotencyClaim>,
    ) -> Result<strata::AppendOutcome, strata::StoreError> {
        self.inner.append_claimed(stream, expected, events, claim).await
    }
    async fn read_claim(
        &self,
        key: &str,
    ) -> Result<Option<strata::IdempotencyRecord>, strata::StoreError> {
        self.inner.read_claim(key).await
    }
    async fn read_snapshot(
        &self,
        stream: &strata::StreamId,
    ) -> Result<Option<strata::Snapshot>, strata::StoreError> {
        self.inner.read_snapshot(stream).await
    }
    async fn write_snapshot(
        &self,
        stream: &strata::StreamId,
        snapshot: &strata::Snapshot,
    ) -> Result<(), strata::StoreError> {
        self.inner.write_snapshot(stream, snapshot).await
    }
    async fn event_types(&self) -> Result<Vec<(String, u32)>, strata::StoreError> {
        self.inner.event_types().await
    }
    async fn read_stream(
        &self,
        stream: &strata::StreamId,
        after: strata::Version,
    ) -> Result<Vec<RecordedEvent>, strata::StoreError> {
        self.inner.read_stream(stream, after).await
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, strata::StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(strata::StoreError::Backend("the database blinked".into()));
        }
        let mut events = self.inner.read_all(after, limit).await?;
        for event in &mut events {
            event.metadata.recorded_at -= chrono::Duration::seconds(self.seconds_ago);
        }
        Ok(events)
    }
    async fn read_positions(
        &self,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, strata::StoreError> {
        self.inner.read_positions(positions).await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.subscribe()
    }
}

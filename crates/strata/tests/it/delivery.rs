//! Deliveries on the in-memory store: every event handed over in order, again after a
//! failed hand-over, and nothing at all from a checkpoint past the log's head.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::{
    Checkpoint, Commit, EventStore, ExpectedVersion, InMemoryEventStore, InMemoryViewManager,
    LocalLeases, Outlet, Position, ProjectionRunner, RecordedEvent, Slot, StreamId, ViewManager,
};
use strata_testkit::tally;

/// Keeps what it is handed; refuses the first `refusals` hand-overs.
#[derive(Default)]
struct Kept {
    positions: Mutex<Vec<u64>>,
    refusals: Mutex<u32>,
}

impl Outlet for Kept {
    async fn deliver(&self, events: &[RecordedEvent]) -> Result<(), String> {
        let mut refusals = self.refusals.lock().unwrap();
        if *refusals > 0 {
            *refusals -= 1;
            return Err("the receiver is away".to_owned());
        }
        self.positions.lock().unwrap().extend(events.iter().map(|event| event.position.0));
        Ok(())
    }
}

async fn log_of(events: u64) -> Arc<InMemoryEventStore> {
    let store = Arc::new(InMemoryEventStore::new());
    for n in 0..events {
        let stream = StreamId::new(tally::TALLY, format!("t{}", n % 7));
        store.append(&stream, ExpectedVersion::Any, vec![tally::added(1)]).await.unwrap();
    }
    store
}

#[tokio::test]
async fn every_event_is_handed_over_in_order_even_after_refusals() {
    let store = log_of(1_200).await;
    let outlet = Arc::new(Kept { refusals: Mutex::new(2), ..Kept::default() });
    let views = Arc::new(InMemoryViewManager::new());
    let handle = ProjectionRunner::new("n").spawn_delivery(
        "out",
        outlet.clone(),
        store.clone(),
        views.clone(),
        Arc::new(LocalLeases),
    );
    handle.wait_for(Position(1_200), Duration::from_secs(10)).await.unwrap();
    assert_eq!(*outlet.positions.lock().unwrap(), (1..=1_200).collect::<Vec<u64>>());
    assert_eq!(views.checkpoint("out", Slot::Live).await.unwrap().position, Position(1_200));
    let status = handle.status().await.unwrap();
    assert_eq!((status.lag_events, status.error), (0, None));
    handle.stop();
}

#[tokio::test]
async fn a_checkpoint_past_the_head_delivers_nothing_and_says_why() {
    let store = log_of(10).await;
    let views = Arc::new(InMemoryViewManager::new());
    views.prepare("out", &[], 1).await.unwrap();
    views
        .commit::<()>("out", Slot::Live, Commit::new(Checkpoint::START, Position(50)))
        .await
        .unwrap();
    let outlet = Arc::new(Kept::default());
    let handle = ProjectionRunner::new("n").spawn_delivery(
        "out",
        outlet.clone(),
        store,
        views,
        Arc::new(LocalLeases),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        if let Some(error) = handle.status().await.unwrap().error {
            break error;
        }
        assert!(Instant::now() < deadline, "the delivery never said why it stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("past the log's head"), "{error}");
    assert!(outlet.positions.lock().unwrap().is_empty());
    handle.stop();
}

//! The in-memory backend runs the same contract suites as every other backend.

use strata::{
    EventStore, ExpectedVersion, InMemoryEventStore, InMemoryViewManager, Position, StreamId,
    Version,
};
use strata_testkit::{EventStoreFactory, ViewManagerFactory};

struct Memory;

impl EventStoreFactory for Memory {
    type Store = InMemoryEventStore;
    async fn open(&self) -> InMemoryEventStore {
        InMemoryEventStore::new()
    }
    fn durable(&self) -> bool {
        false
    }
}

impl ViewManagerFactory for Memory {
    type Manager = InMemoryViewManager;
    async fn open(&self) -> InMemoryViewManager {
        InMemoryViewManager::new()
    }
    fn durable(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_event_store_meets_the_contract() {
    strata_testkit::event_store_contract(Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_view_manager_meets_the_contract() {
    strata_testkit::view_manager_contract(Memory).await;
}

/// The in-memory log is kept in segments of 16,384 events; a log of several reads back whole
/// and in order from any place, across the seams.
#[tokio::test]
async fn a_log_of_several_segments_reads_back_across_their_seams() {
    let store = InMemoryEventStore::new();
    let streams = [StreamId::new("seam", "a"), StreamId::new("seam", "b")];
    let total: u64 = 40_000;
    let mut appended = Vec::new();
    for batch in 0..total / 500 {
        let stream = &streams[(batch % 2) as usize];
        let events: Vec<_> =
            (batch * 500..(batch + 1) * 500).map(strata_testkit::sample_event).collect();
        appended.extend(events.iter().map(|event| event.payload.clone()));
        store.append(stream, ExpectedVersion::Any, events).await.expect("append");
    }

    let read = strata_testkit::read_everything(&store).await;
    let positions: Vec<u64> = read.iter().map(|event| event.position.0).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>(), "every position once, in order");
    let payloads: Vec<_> = read.iter().map(|event| event.payload.clone()).collect();
    assert_eq!(payloads, appended, "each position holds the event appended there");

    for seam in [16_384, 32_768] {
        let around = store.read_all(Position(seam - 2), 4).await.expect("read");
        let got: Vec<u64> = around.iter().map(|event| event.position.0).collect();
        assert_eq!(got, vec![seam - 1, seam, seam + 1, seam + 2], "read across the seam at {seam}");
        let picked =
            store.read_positions(&[Position(seam), Position(seam + 1)]).await.expect("read");
        assert_eq!(picked.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![seam, seam + 1]);
    }
    let from_seam = store.read_all(Position(16_384), 2).await.expect("read");
    assert_eq!(from_seam.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![16_385, 16_386]);
    for beyond in [total, total + 1, u64::MAX] {
        let read = store.read_all(Position(beyond), 10).await.expect("read");
        assert!(read.is_empty(), "nothing after {beyond}");
    }
    let tail = store.read_stream(&streams[1], Version(19_998)).await.expect("read");
    assert_eq!(tail.iter().map(|e| e.version.0).collect::<Vec<_>>(), vec![19_999, 20_000]);
    assert_eq!(tail.last().map(|e| e.position.0), Some(total), "b holds the last batch");
}

/// Two in-memory managers behind [`strata::RoutedViews`]: the projections with tables on one,
/// the rest on the other, and the pair keeps the same contract.
struct Routed;

impl ViewManagerFactory for Routed {
    type Manager = strata::RoutedViews<InMemoryViewManager, InMemoryViewManager>;
    async fn open(&self) -> Self::Manager {
        let routed = [
            "tables",
            "rebuilt",
            "tally_parking",
            "tally_handover",
            "tally_failing_rebuild",
            "tally_operated_rebuild",
            "tally_versions",
            "tally_ahead",
        ];
        let (main, other) = (InMemoryViewManager::new(), InMemoryViewManager::new());
        strata::RoutedViews::new(std::sync::Arc::new(main), std::sync::Arc::new(other), routed)
    }
    fn durable(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_routed_to_two_managers_meet_the_contract() {
    strata_testkit::view_manager_contract(Routed).await;
}

#[tokio::test]
async fn routed_projections_and_their_tables_live_in_the_other_manager() {
    use strata::{Checkpoint, Commit, Position, RowChange, Slot, StoredView, Value, ViewManager};
    use strata_testkit::tally::{TALLY_ROWS, TALLY_TABLES};
    let views = Routed.open().await;
    for name in ["tally_parking", "plain"] {
        views.prepare(name, if name == "plain" { &[] } else { &TALLY_TABLES }, 1).await.unwrap();
        let mut commit = Commit::new(Checkpoint::START, Position(1));
        commit.views.push(("v".to_owned(), StoredView::current(name.to_owned(), Position(1))));
        if name != "plain" {
            let row = vec![Value::Text("v".into()), Value::Integer(1), Value::Integer(1)];
            commit.rows.push(RowChange::Upsert { table: &TALLY_ROWS, row });
        }
        views.commit(name, Slot::Live, commit).await.unwrap();
    }
    let in_other = views.other().get::<String>("tally_parking", "v").await.unwrap();
    assert!(in_other.is_some(), "a routed projection's views are in the other manager");
    assert!(views.main().get::<String>("tally_parking", "v").await.unwrap().is_none());
    assert!(views.main().get::<String>("plain", "v").await.unwrap().is_some());
    assert!(views.other().get::<String>("plain", "v").await.unwrap().is_none());
    let query = strata::table::TableQuery::default();
    assert_eq!(views.select(&TALLY_ROWS, &query).await.unwrap().len(), 1, "its table is found");
    assert!(views.main().select(&TALLY_ROWS, &query).await.unwrap().is_empty());
}

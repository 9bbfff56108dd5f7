//! The in-memory backend runs the same contract suites as every other backend.

use strata::{InMemoryEventStore, InMemoryViewManager};
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

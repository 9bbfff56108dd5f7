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

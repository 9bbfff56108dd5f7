//! The contract suites of `strata-testkit`, run on SQLite stores in a temporary directory.

use strata_sqlite::{SqliteEventStore, SqliteViewManager};
use strata_testkit::{EventStoreFactory, ViewManagerFactory};
use tempfile::TempDir;

/// Opens the stores of one temporary directory, the same one every time.
struct InTempDir(TempDir);

impl InTempDir {
    fn new() -> Self {
        Self(TempDir::new().expect("create a temporary directory"))
    }
}

impl EventStoreFactory for InTempDir {
    type Store = SqliteEventStore;

    async fn open(&self) -> SqliteEventStore {
        SqliteEventStore::open(self.0.path()).expect("open the event store")
    }

    fn durable(&self) -> bool {
        true
    }
}

impl ViewManagerFactory for InTempDir {
    type Manager = SqliteViewManager;

    async fn open(&self) -> SqliteViewManager {
        SqliteViewManager::open(self.0.path()).expect("open the view manager")
    }

    fn durable(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_store_keeps_the_contract() {
    strata_testkit::event_store_contract(InTempDir::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_manager_keeps_the_contract() {
    strata_testkit::view_manager_contract(InTempDir::new()).await;
}

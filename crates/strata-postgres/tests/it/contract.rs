//! The contract suites of `strata-testkit`, run on PostgreSQL, each in a fresh schema.

use strata_postgres::{PgEventStore, PgViewManager};
use strata_testkit::services::PostgresFixture;
use strata_testkit::{EventStoreFactory, ViewManagerFactory};

/// Opens the stores of one schema, the same one every time, as a new node would.
struct InSchema(PostgresFixture);

impl EventStoreFactory for InSchema {
    type Store = PgEventStore;

    async fn open(&self) -> PgEventStore {
        PgEventStore::connect(self.0.base_url(), Some(self.0.schema())).await.unwrap()
    }

    fn durable(&self) -> bool {
        true
    }
}

impl ViewManagerFactory for InSchema {
    type Manager = PgViewManager;

    async fn open(&self) -> PgViewManager {
        PgViewManager::connect(self.0.base_url(), Some(self.0.schema())).await.unwrap()
    }

    fn durable(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_store_keeps_the_contract() {
    let Some(fixture) = crate::fixture().await else { return };
    strata_testkit::event_store_contract(InSchema(fixture)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_manager_keeps_the_contract() {
    let Some(fixture) = crate::fixture().await else { return };
    strata_testkit::view_manager_contract(InSchema(fixture)).await;
}

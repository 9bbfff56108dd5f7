//! The one integration-test binary of `strata-postgres`: the shared contract suites run on
//! PostgreSQL, plus what only this backend promises (gap-free order across nodes, group
//! commit, notifications between nodes, leases, concurrent migrations).
//!
//! Every test works in its own fresh schema from `strata_testkit::services::postgres`,
//! dropped when the test ends. Without a reachable server the tests print why and pass,
//! unless `STRATA_REQUIRE_SERVICES=1`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on any unexpected error")]

mod contract;
mod faults;
mod gap_free;
mod lease;
mod store;

use strata_postgres::PgDatabase;
use strata_testkit::services::PostgresFixture;

/// A fresh schema, or `None` (the test returns early) when PostgreSQL is unreachable.
async fn fixture() -> Option<PostgresFixture> {
    strata_testkit::services::postgres().await
}

/// The fixture's schema, migrated.
async fn database(fixture: &PostgresFixture) -> PgDatabase {
    PgDatabase::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap()
}

/// A plain connection to the fixture's schema, for SQL the stores do not offer.
async fn raw_client(fixture: &PostgresFixture) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&fixture.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

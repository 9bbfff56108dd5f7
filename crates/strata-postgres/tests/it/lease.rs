//! Leases keep each projection on one node at a time: exclusive while held, released when
//! the holder's connection dies, and visible to every node.

use std::time::Duration;

use strata_postgres::PgLease;

use crate::{database, fixture, raw_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_and_moves_when_its_holder_dies() {
    let Some(fixture) = fixture().await else { return };
    let database = database(&fixture).await;

    let held = PgLease::try_acquire(&database, "orders", "node-1").await.unwrap().unwrap();
    assert!(PgLease::try_acquire(&database, "orders", "node-2").await.unwrap().is_none());
    let other = PgLease::try_acquire(&database, "inventory", "node-2").await.unwrap();
    assert!(other.is_some(), "leases of different names are independent");
    let owners = PgLease::owners(&database).await.unwrap();
    let orders = owners.iter().find(|o| o.name == "orders").unwrap();
    assert_eq!((orders.owner.as_str(), orders.held), ("node-1", true));

    // The holder's node dies: its backend is terminated, as when its process is killed.
    let admin = raw_client(&fixture).await;
    admin.execute("SELECT pg_terminate_backend($1)", &[&held.backend_pid()]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held.lost()).await.expect("the holder is told");
    assert!(held.is_lost());

    let taken_over = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lease) = PgLease::try_acquire(&database, "orders", "node-2").await.unwrap()
            {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("another node takes the lease over");
    let owners = PgLease::owners(&database).await.unwrap();
    let orders = owners.iter().find(|o| o.name == "orders").unwrap();
    assert_eq!((orders.owner.as_str(), orders.held), ("node-2", true));

    // Dropping a lease releases it too.
    drop(taken_over);
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lease) = PgLease::try_acquire(&database, "orders", "node-3").await.unwrap()
            {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "a dropped lease is free again");
    drop(held);
}

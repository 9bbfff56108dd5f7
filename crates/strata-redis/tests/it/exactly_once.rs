//! Runners killed mid-batch, again and again, while two nodes take the projection from
//! each other. Commits are slow on the wire: one sent just before its runner dies lands
//! while the next runner already works from the old checkpoint, and the fence must turn
//! one of the two batches away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::table::TableQuery;
use strata::{EventStore, ExpectedVersion, InMemoryEventStore, ProjectionRunner, StreamId};
use strata_redis::RedisViewManager;
use strata_testkit::DyingViews;
use strata_testkit::leases::SharedLeases;
use strata_testkit::tally::{self, TALLY, TALLY_SUMS, Tally};

const TALLIES: u64 = 40;
const EVENTS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_killed_mid_batch_apply_no_instance_twice() {
    let Some(fixture) = strata_testkit::services::redis() else { return };
    let connect =
        async || RedisViewManager::connect(fixture.url(), fixture.prefix()).await.unwrap();
    let views = Arc::new(connect().await);
    let slow = async || {
        let views = DyingViews::new(Arc::new(connect().await));
        views.land_late(Duration::from_millis(10));
        Arc::new(views)
    };
    let store = Arc::new(InMemoryEventStore::new());
    let mut expected = vec![(0_i64, 0_u64); TALLIES as usize];
    let mut head = strata::Position::START;
    for n in 0..EVENTS {
        let tally = (n * 7919) % TALLIES;
        let amount = (n % 5) as i64 + 1;
        let stream = StreamId::new(TALLY, format!("t{tally}"));
        let outcome =
            store.append(&stream, ExpectedVersion::Any, vec![tally::added(amount)]).await.unwrap();
        head = outcome.last_position;
        expected[tally as usize].0 += amount;
        expected[tally as usize].1 += 1;
    }

    let name = "tally_killed";
    let leases = SharedLeases::new();
    let a = ProjectionRunner::new("a").spawn_leased(
        tally::projection(name, true),
        store.clone(),
        slow().await,
        leases.node("a"),
    );
    let b = ProjectionRunner::new("b").spawn_leased(
        tally::projection(name, true),
        store.clone(),
        slow().await,
        leases.node("b"),
    );
    // Kill whoever runs it at irregular moments of a few milliseconds: most land while a
    // batch's reads or its commit script are in flight.
    let mut seed = Instant::now().elapsed().subsec_nanos() | 1;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.position() < head || b.position() < head {
        assert!(Instant::now() < deadline, "never caught up; {kills} kills (seed {seed})");
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        tokio::time::sleep(Duration::from_micros(2_000 + u64::from(seed % 20_000))).await;
        if leases.kill_holder(name).is_some() {
            kills += 1;
        }
    }
    assert!(kills >= 20, "only {kills} kills happened: the test did not test");

    use strata::ViewManager;
    let mut all = (0_i64, 0_i64);
    for (i, (total, events)) in expected.iter().enumerate() {
        let id = format!("t{i}");
        let tally = views.get::<Tally>(name, &id).await.unwrap().unwrap();
        assert_eq!((tally.view.total, tally.view.events), (*total, *events), "tally {id}");
        all.0 += total;
        all.1 += 1;
    }
    // A batch applied twice would add its differences to the sums a second time.
    let sums = views.select(&TALLY_SUMS, &TableQuery::default()).await.unwrap();
    let sums = sums.first().map(|row| (row[1].as_integer().unwrap(), row[2].as_integer().unwrap()));
    assert_eq!(sums, Some(all), "the sums table after {kills} kills");
    a.stop();
    b.stop();
}

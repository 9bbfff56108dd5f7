//! Group commit: concurrent appends share one transaction, yet each caller gets its own
//! answer, a failing append fails alone, and the log stays dense and in commit order.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use strata::{AppendOutcome, EventStore, ExpectedVersion, NewEvent, Position, StoreError, Version};
use strata_sqlite::SqliteEventStore;
use tempfile::TempDir;

use crate::{NEW, event, stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_each_get_their_own_answer() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).unwrap());

    // 200 appends of two events to streams of their own, and 20 appends of three events
    // that all claim the same new stream.
    let mut distinct = Vec::new();
    for n in 0..200u64 {
        let (store, events) = (Arc::clone(&store), vec![event(2 * n), event(2 * n + 1)]);
        distinct.push(tokio::spawn(async move {
            let outcome = store.append(&stream(&format!("own-{n}")), NEW, events.clone()).await;
            (events, outcome)
        }));
    }
    let mut contested = Vec::new();
    for n in 0..20u64 {
        let store = Arc::clone(&store);
        let events = vec![event(1000 + 3 * n), event(1001 + 3 * n), event(1002 + 3 * n)];
        contested.push(tokio::spawn(async move {
            let outcome = store.append(&stream("contested"), NEW, events.clone()).await;
            (events, outcome)
        }));
    }

    let mut winners: Vec<(Vec<NewEvent>, AppendOutcome)> = Vec::new();
    for task in distinct {
        let (events, outcome) = task.await.unwrap();
        let outcome = outcome.expect("an append to its own stream succeeds");
        assert_eq!(outcome.version, Version(2));
        winners.push((events, outcome));
    }
    let mut conflicts = 0;
    for task in contested {
        let (events, outcome) = task.await.unwrap();
        match outcome {
            Ok(outcome) => winners.push((events, outcome)),
            Err(StoreError::Conflict { expected, actual, .. }) => {
                assert_eq!(expected, NEW);
                assert_eq!(actual, Version(3), "a loser sees the winner's three events");
                conflicts += 1;
            }
            Err(other) => panic!("unexpected error for a contested append: {other}"),
        }
    }
    assert_eq!(conflicts, 19, "exactly one contested append wins");

    // The log holds exactly the winners' events, densely numbered, each append's events
    // together at the positions its answer named.
    let log = store.read_all(Position::START, 10_000).await.unwrap();
    let total = 200 * 2 + 3;
    assert_eq!(log.len(), total);
    for (index, recorded) in log.iter().enumerate() {
        assert_eq!(recorded.position, Position(index as u64 + 1), "positions are dense");
    }
    for (events, outcome) in &winners {
        let first = usize::try_from(outcome.first_position.0).unwrap() - 1;
        let last = usize::try_from(outcome.last_position.0).unwrap();
        let stored: Vec<_> = log[first..last].iter().map(|e| e.metadata.event_id).collect();
        let appended: Vec<_> = events.iter().map(|e| e.metadata.event_id).collect();
        assert_eq!(stored, appended);
    }
    let stored: HashSet<_> = log.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(stored.len(), total, "no event is stored twice");
    assert_eq!(store.head(), Position(total as u64));
}

type Append<'a> = Pin<Box<dyn Future<Output = Result<AppendOutcome, StoreError>> + 'a>>;

#[tokio::test]
async fn a_failing_append_in_a_group_fails_alone() {
    let dir = TempDir::new().unwrap();
    let store = SqliteEventStore::open(dir.path()).unwrap();
    let stored_before = event(0);
    store.append(&stream("seed"), NEW, vec![stored_before.clone()]).await.unwrap();

    // Another connection holds the write lock, so the writer thread cannot commit while
    // the appends below are sent; they queue up and are taken as one group (at most the
    // first may go alone, which is why it is a bystander).
    let blocker = rusqlite::Connection::open(dir.path().join("events.sqlite")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let (e1, e2, e3, e4, e5, e6, e7, e8, e9) =
        (event(1), event(2), event(3), event(4), event(5), event(6), event(7), event(8), event(9));
    let streams = ["bystander", "a", "b", "c", "d", "e", "f"].map(stream);
    let [bystander, a, b, c, d, e, f] = &streams;
    let mut appends: Vec<Append<'_>> = vec![
        Box::pin(store.append(bystander, NEW, vec![e1.clone()])),
        // Creates `a`.
        Box::pin(store.append(a, NEW, vec![e2.clone()])),
        // Also wants to create `a`, one request later in the same group: conflict.
        Box::pin(store.append(a, NEW, vec![e3.clone()])),
        // Two events; the second reuses an id stored before: nothing of it is written.
        Box::pin(store.append(b, NEW, vec![e4.clone(), stored_before.clone()])),
        // Reuses an id written earlier in the same group.
        Box::pin(store.append(c, NEW, vec![e5.clone(), e2.clone()])),
        // Expects a version the stream does not have.
        Box::pin(store.append(d, ExpectedVersion::Exact(Version(5)), vec![e6.clone()])),
        // Builds on the earlier append to `a` in the same group.
        Box::pin(store.append(a, ExpectedVersion::Exact(Version(1)), vec![e7.clone()])),
        Box::pin(store.append(e, NEW, vec![e8.clone()])),
        Box::pin(store.append(f, ExpectedVersion::Any, vec![e9.clone()])),
    ];
    // Poll each append once, which sends its request; none can be answered yet.
    std::future::poll_fn(|context| {
        for append in &mut appends {
            assert!(append.as_mut().poll(context).is_pending(), "answered while the lock is held");
        }
        Poll::Ready(())
    })
    .await;
    blocker.execute_batch("ROLLBACK").unwrap();

    let mut outcomes = Vec::new();
    for append in appends {
        outcomes.push(append.await);
    }
    let mut outcomes = outcomes.into_iter();
    let mut next = || outcomes.next().unwrap();

    let ok = |outcome: Result<AppendOutcome, StoreError>, version: u64, position: u64| {
        let outcome = outcome.expect("this append succeeds");
        assert_eq!(outcome.version, Version(version));
        assert_eq!(outcome.first_position, Position(position));
    };
    ok(next(), 1, 2);
    ok(next(), 1, 3);
    assert!(matches!(next(), Err(StoreError::Conflict { actual: Version(1), .. })));
    assert!(
        matches!(next(), Err(StoreError::DuplicateEventId(id)) if id == stored_before.metadata.event_id)
    );
    assert!(matches!(next(), Err(StoreError::DuplicateEventId(id)) if id == e2.metadata.event_id));
    assert!(matches!(next(), Err(StoreError::Conflict { actual: Version(0), .. })));
    ok(next(), 2, 4);
    ok(next(), 1, 5);
    ok(next(), 1, 6);

    // Exactly the successful appends are stored, with no hole where the failures were.
    let log = store.read_all(Position::START, 100).await.unwrap();
    let ids: Vec<_> = log.iter().map(|e| e.metadata.event_id).collect();
    let expected: Vec<_> =
        [&stored_before, &e1, &e2, &e7, &e8, &e9].iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(ids, expected);
    let positions: Vec<_> = log.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6]);
    assert!(store.read_stream(b, Version::NONE).await.unwrap().is_empty());
    assert!(store.read_stream(c, Version::NONE).await.unwrap().is_empty());
    assert_eq!(store.head(), Position(6));
}

#[tokio::test]
async fn appends_survive_reopening_and_positions_continue() {
    let dir = TempDir::new().unwrap();
    let appended = vec![event(1), event(2)];
    {
        let store = SqliteEventStore::open(dir.path()).unwrap();
        store.append(&stream("kept"), NEW, appended.clone()).await.unwrap();
    }
    let store = SqliteEventStore::open(dir.path()).unwrap();
    assert_eq!(store.head(), Position(2));
    let read = store.read_stream(&stream("kept"), Version::NONE).await.unwrap();
    let read: Vec<_> = read.into_iter().map(|e| (e.payload, e.metadata)).collect();
    let appended: Vec<_> = appended.into_iter().map(|e| (e.payload, e.metadata)).collect();
    assert_eq!(read, appended, "events read back equal what was appended, time included");

    let outcome = store.append(&stream("later"), NEW, vec![event(3)]).await.unwrap();
    assert_eq!(outcome.first_position, Position(3));
}

//! What the PostgreSQL event store promises beyond the contract: a refused append inside a
//! group commit fails alone, another node's commit wakes this node's subscribers, several
//! nodes starting at once migrate a schema exactly once, one idempotency key sent to two
//! nodes at once appends once, a node's remembered stream versions never outlive
//! another node's commit, and a stream a node takes to be new is checked against the log.

use std::sync::Arc;
use std::time::Duration;

use strata::{
    EventStore, ExpectedVersion, IdempotencyClaim, IdempotencyStore, Position, StoreError,
    StreamId, Version,
};
use strata_postgres::{PgDatabase, PgEventStore};
use strata_testkit::sample_event;

use crate::{database, fixture, raw_client};

fn stream(id: &str) -> StreamId {
    StreamId::new("test", id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_inside_a_group_fails_alone() {
    let Some(fixture) = fixture().await else { return };
    let database = database(&fixture).await;
    let store = PgEventStore::open(&database).await.unwrap();
    let first = sample_event(0);
    let taken_id = first.metadata.clone();
    store.append(&stream("hot"), ExpectedVersion::NoStream, vec![first]).await.unwrap();

    // Hold the append lock so that every append below queues behind it: the writer's next
    // group then holds them all (the first one may form a group of its own).
    let mut blocker = raw_client(&fixture).await;
    let holding = blocker.transaction().await.unwrap();
    holding
        .execute("SELECT pg_advisory_xact_lock($1)", &[&database.append_lock_key()])
        .await
        .unwrap();

    let mut appends = Vec::new();
    for n in 0..30 {
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            let events = vec![sample_event(n), sample_event(n + 100)];
            (
                "fresh",
                store.append(&stream(&format!("s{n}")), ExpectedVersion::NoStream, events).await,
            )
        }));
    }
    for n in 0..5 {
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            (
                "stale",
                store
                    .append(&stream("hot"), ExpectedVersion::NoStream, vec![sample_event(n)])
                    .await,
            )
        }));
    }
    for n in 0..5 {
        let store = store.clone();
        let mut duplicate = sample_event(n);
        duplicate.metadata = taken_id.clone();
        appends.push(tokio::spawn(async move {
            let events = vec![sample_event(n + 200), duplicate];
            (
                "duplicate",
                store.append(&stream(&format!("d{n}")), ExpectedVersion::NoStream, events).await,
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    holding.commit().await.unwrap();

    for append in appends {
        match append.await.unwrap() {
            ("fresh", Ok(outcome)) => assert_eq!(outcome.version, Version(2)),
            ("stale", Err(StoreError::Conflict { actual, .. })) => assert_eq!(actual, Version(1)),
            ("duplicate", Err(StoreError::DuplicateEventId(id))) => {
                assert_eq!(id, taken_id.event_id);
            }
            (kind, other) => panic!("unexpected outcome of a {kind} append: {other:?}"),
        }
    }
    let all = store.read_all(Position::START, usize::MAX).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=61).collect::<Vec<_>>(), "1 + 30 * 2 events, no holes");
    assert_eq!(store.head(), Position(61));
    for n in 0..5 {
        let refused = store.read_stream(&stream(&format!("d{n}")), Version::NONE).await.unwrap();
        assert!(refused.is_empty(), "no event of a refused append is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_commit_wakes_this_nodes_subscribers() {
    let Some(fixture) = fixture().await else { return };
    let writer_node =
        PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    let reader_node =
        PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    let mut heads = reader_node.subscribe();
    let outcome = writer_node
        .append(&stream("a"), ExpectedVersion::NoStream, vec![sample_event(1), sample_event(2)])
        .await
        .unwrap();
    // Well under the listener's 5 s fallback poll: only the notification can be this fast.
    let woke = tokio::time::timeout(
        Duration::from_secs(2),
        heads.wait_for(|head| *head >= outcome.last_position),
    )
    .await;
    assert!(woke.is_ok(), "the other node's commit was announced");
    assert_eq!(reader_node.head(), Position(2));
    let read = reader_node.read_all(Position::START, 10).await.unwrap();
    assert_eq!(read.len(), 2, "a woken follower finds the rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_a_new_schema_once() {
    let Some(fixture) = fixture().await else { return };
    // A schema that does not exist yet; it shares the fixture's prefix and timestamp, so a
    // later run drops it if this test dies before its own cleanup.
    let schema = format!("{}_fresh", fixture.schema());
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let (url, schema) = (fixture.base_url().to_owned(), schema.clone());
        nodes.push(tokio::spawn(async move { PgDatabase::connect(&url, Some(&schema)).await }));
    }
    for node in nodes {
        node.await.unwrap().unwrap();
    }
    // And once more against the existing schema.
    PgDatabase::connect(fixture.base_url(), Some(&schema)).await.unwrap();
    let client = raw_client(&fixture).await;
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT version) FROM {schema}.strata_migrations"),
            &[],
        )
        .await
        .unwrap();
    let (rows, versions): (i64, i64) = (row.get(0), row.get(1));
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    let known = PgDatabase::SCHEMA_VERSION as i64;
    assert_eq!((rows, versions), (known, known), "each migration ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_another_node_appended_to_is_not_judged_by_a_remembered_version() {
    let Some(fixture) = fixture().await else { return };
    let node_a = PgEventStore::open(&database(&fixture).await).await.unwrap();
    let node_b = PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    // Node A writes the order and remembers its version, 1.
    node_a
        .append(&stream("order"), ExpectedVersion::NoStream, vec![sample_event(0)])
        .await
        .unwrap();
    // Node B appends to it behind A's back.
    node_b
        .append(&stream("order"), ExpectedVersion::Exact(Version(1)), vec![sample_event(1)])
        .await
        .unwrap();
    // A commits something else, seeing (and passing) B's commit...
    node_a
        .append(&stream("other"), ExpectedVersion::NoStream, vec![sample_event(2)])
        .await
        .unwrap();
    // ...and must not take the order to be still at version 1 afterwards.
    let appended = node_a
        .append(&stream("order"), ExpectedVersion::Exact(Version(2)), vec![sample_event(3)])
        .await;
    match appended {
        Ok(appended) => assert_eq!(appended.version, Version(3)),
        Err(error) => panic!("judged by a stale version: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_new_to_this_node_but_not_to_the_log_is_a_conflict_and_leaves_no_gap() {
    let Some(fixture) = fixture().await else { return };
    let node_b = PgEventStore::open(&database(&fixture).await).await.unwrap();
    node_b
        .append(&stream("order"), ExpectedVersion::NoStream, vec![sample_event(0)])
        .await
        .unwrap();
    // Node A starts after that and commits once, so it knows the head and nothing of the
    // order: its next group is planned without reading the log.
    let node_a = PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    node_a
        .append(&stream("other"), ExpectedVersion::NoStream, vec![sample_event(1)])
        .await
        .unwrap();
    match node_a.append(&stream("order"), ExpectedVersion::NoStream, vec![sample_event(2)]).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Version(1)),
        other => panic!("an existing stream was taken to be new: {other:?}"),
    }
    let next = node_a
        .append(&stream("third"), ExpectedVersion::NoStream, vec![sample_event(3)])
        .await
        .unwrap();
    assert_eq!(next.first_position, Position(3), "the refused append left a hole");
    let order = node_a.read_stream(&stream("order"), Version::NONE).await.unwrap();
    assert_eq!(order.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_nodes_at_once_appends_once() {
    let Some(fixture) = fixture().await else { return };
    let node_a = Arc::new(PgEventStore::open(&database(&fixture).await).await.unwrap());
    let node_b =
        Arc::new(PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap());
    for round in 0..20 {
        let key = format!("key-{round}");
        let claim = IdempotencyClaim { key: key.clone(), fingerprint: "f".into(), recorded: None };
        let send = |node: Arc<PgEventStore>, side: &str| {
            let (claim, own) = (claim.clone(), stream(&format!("{side}-{round}")));
            tokio::spawn(async move {
                node.append_claimed(
                    &own,
                    ExpectedVersion::NoStream,
                    vec![sample_event(round)],
                    Some(&claim),
                )
                .await
            })
        };
        let (a, b) = (send(node_a.clone(), "a"), send(node_b.clone(), "b"));
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let won: Vec<_> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one node appends, got {outcomes:?}");
        let lost = outcomes.iter().find_map(|outcome| match outcome {
            Err(StoreError::KeyClaimed { record, .. }) => Some(record.appended.clone()),
            _ => None,
        });
        let appended = lost.flatten().expect("the other node is told where the first appended");
        assert_eq!(appended.position, Some(won[0].last_position));
        let record = node_b.get(&key).await.unwrap().expect("both nodes see the record");
        assert_eq!(record.appended, Some(appended));
    }
}

#[tokio::test]
async fn a_url_whose_search_path_names_a_new_schema_creates_it() {
    let Some(fixture) = fixture().await else { return };
    let schema = format!("{}_named", fixture.schema());
    let separator = if fixture.base_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}options=-csearch_path%3D{schema}", fixture.base_url());
    let store = PgEventStore::connect(&url, None).await.unwrap();
    assert_eq!(store.database().schema(), schema);
    store.append(&stream("s"), ExpectedVersion::NoStream, vec![sample_event(1)]).await.unwrap();
    drop(store);
    let client = raw_client(&fixture).await;
    let created: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.strata_events"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 1, "the schema named by search_path was created and used");
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

//! The event store contract: what every [`EventStore`] must do, checked on a real instance.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use strata::{
    EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError,
    StreamId, Version,
};

use crate::EventStoreFactory;

/// An event of type `Sample` whose payload is `{"n": n}`, with fresh metadata.
pub fn sample_event(n: u64) -> NewEvent {
    let mut metadata = EventMetadata::new("contract-correlation", Some(format!("command-{n}")));
    metadata.user = n.is_multiple_of(2).then(|| "contract-user".to_owned());
    NewEvent {
        event_type: "Sample".to_owned(),
        schema_version: 1,
        payload: serde_json::to_vec(&serde_json::json!({ "n": n })).expect("json encodes"),
        metadata,
    }
}

fn stream(name: &str) -> StreamId {
    StreamId::new("contract", name)
}

fn assert_recorded(recorded: &RecordedEvent, appended: &NewEvent, stream: &StreamId, version: u64) {
    assert_eq!(&recorded.stream, stream);
    assert_eq!(recorded.version, Version(version));
    assert_eq!(recorded.event_type, appended.event_type);
    assert_eq!(recorded.schema_version, appended.schema_version);
    assert_eq!(recorded.payload, appended.payload);
    assert_eq!(recorded.metadata, appended.metadata, "metadata must round-trip exactly");
}

/// Runs every event store check against stores opened by `factory`. Panics on the first
/// broken promise, naming it.
pub async fn event_store_contract<F: EventStoreFactory>(factory: F) {
    let store = factory.open().await;
    empty_store_reads_nothing(&store).await;
    multi_event_append_is_atomic_and_ordered(&store).await;
    stale_expected_version_conflicts_and_writes_nothing(&store).await;
    invalid_appends_write_nothing(&store).await;
    reads_after_a_position_come_in_batches(&store).await;
    subscribers_hear_of_new_commits(&store).await;
    events_are_read_by_position(&store).await;
    let store = Arc::new(store);
    concurrent_appenders_lose_nothing(&store).await;
    let before = read_everything(store.as_ref()).await;
    drop(store);
    if factory.durable() {
        let reopened = factory.open().await;
        reopened_store_keeps_everything(&reopened, &before).await;
    }
}

async fn read_everything<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store.read_all(after, 97).await.expect("read_all works");
        let Some(last) = batch.last() else { break };
        after = last.position;
        all.extend(batch);
    }
    all
}

async fn empty_store_reads_nothing<S: EventStore>(store: &S) {
    assert_eq!(store.head(), Position::START, "a new store's head is the start");
    assert!(store.read_all(Position::START, 10).await.expect("read_all").is_empty());
    assert!(store.read_stream(&stream("none"), Version::NONE).await.expect("read").is_empty());
}

async fn multi_event_append_is_atomic_and_ordered<S: EventStore>(store: &S) {
    let s = stream("atomic");
    let events: Vec<NewEvent> = (1..=3).map(sample_event).collect();
    let outcome =
        store.append(&s, ExpectedVersion::NoStream, events.clone()).await.expect("first append");
    assert_eq!(outcome.version, Version(3));
    assert_eq!(outcome.first_position, Position(1));
    assert_eq!(outcome.last_position, Position(3));
    assert_eq!(store.head(), Position(3), "head moves to the last committed position");

    let read = store.read_stream(&s, Version::NONE).await.expect("read_stream");
    assert_eq!(read.len(), 3);
    for (i, (recorded, appended)) in read.iter().zip(&events).enumerate() {
        assert_recorded(recorded, appended, &s, i as u64 + 1);
        assert_eq!(recorded.position, Position(i as u64 + 1));
    }
    let tail = store.read_stream(&s, Version(2)).await.expect("read_stream after");
    assert_eq!(tail.len(), 1, "reading after version 2 returns only version 3");
    assert_eq!(tail[0].version, Version(3));

    let more = vec![sample_event(4)];
    let outcome = store.append(&s, ExpectedVersion::Exact(Version(3)), more).await.expect("next");
    assert_eq!(outcome.version, Version(4));
    assert_eq!(outcome.first_position, Position(4));
}

async fn stale_expected_version_conflicts_and_writes_nothing<S: EventStore>(store: &S) {
    let s = stream("atomic");
    let head = store.head();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(Version(2))] {
        match store.append(&s, expected, vec![sample_event(5), sample_event(6)]).await {
            Err(StoreError::Conflict { stream: conflicted, expected: e, actual }) => {
                assert_eq!(conflicted, s);
                assert_eq!(e, expected);
                assert_eq!(actual, Version(4), "the conflict names the actual version");
            }
            other => panic!("a stale append must conflict, got {other:?}"),
        }
    }
    match store
        .append(&stream("fresh"), ExpectedVersion::Exact(Version(1)), vec![sample_event(7)])
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Version::NONE),
        other => panic!("expecting version 1 of an empty stream must conflict, got {other:?}"),
    }
    assert_eq!(store.head(), head, "a refused append moves nothing");
    assert_eq!(store.read_stream(&s, Version::NONE).await.expect("read").len(), 4);

    let outcome = store.append(&s, ExpectedVersion::Any, vec![sample_event(8)]).await.expect("any");
    assert_eq!(outcome.version, Version(5), "Any appends whatever the version");
}

async fn invalid_appends_write_nothing<S: EventStore>(store: &S) {
    let head = store.head();
    let s = stream("invalid");
    assert!(
        matches!(
            store.append(&s, ExpectedVersion::NoStream, Vec::new()).await,
            Err(StoreError::EmptyAppend(_))
        ),
        "an empty append is refused"
    );
    let existing = store.read_all(Position::START, 1).await.expect("read")[0].metadata.clone();
    let mut duplicate = sample_event(9);
    duplicate.metadata = existing.clone();
    let batch = vec![sample_event(10), duplicate];
    match store.append(&s, ExpectedVersion::NoStream, batch).await {
        Err(StoreError::DuplicateEventId(id)) => assert_eq!(id, existing.event_id),
        other => panic!("a duplicate event id must be refused, got {other:?}"),
    }
    assert_eq!(store.head(), head, "no event of a refused append is stored");
    assert!(store.read_stream(&s, Version::NONE).await.expect("read").is_empty());
}

async fn reads_after_a_position_come_in_batches<S: EventStore>(store: &S) {
    let s = stream("batches");
    for n in 0..10 {
        let expected = ExpectedVersion::of(Version(n));
        store.append(&s, expected, vec![sample_event(n)]).await.expect("append");
    }
    let all = read_everything(store).await;
    assert_eq!(all.last().map(|e| e.position), Some(store.head()));
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    let dense: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(positions, dense, "positions are dense and increasing");
    let page = store.read_all(Position(3), 4).await.expect("page");
    let page_positions: Vec<u64> = page.iter().map(|e| e.position.0).collect();
    assert_eq!(page_positions, vec![4, 5, 6, 7], "read_all(after, limit) is a page");
    assert!(store.read_all(store.head(), 10).await.expect("past head").is_empty());
}

async fn subscribers_hear_of_new_commits<S: EventStore>(store: &S) {
    let mut heads = store.subscribe();
    heads.mark_unchanged();
    let head = store.head();
    let outcome = store
        .append(&stream("subscribed"), ExpectedVersion::NoStream, vec![sample_event(1)])
        .await
        .expect("append");
    let seen = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        heads.wait_for(|p| *p >= outcome.last_position),
    )
    .await
    .expect("a subscriber is told of the commit")
    .map(|p| *p)
    .expect("the store is alive");
    assert!(seen > head);
}

async fn concurrent_appenders_lose_nothing<S: EventStore>(store: &Arc<S>) {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 20;
    const CONTENDERS: u64 = 8;
    let start = store.head();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("writer-{writer}"));
            for n in 0..APPENDS {
                let events = vec![sample_event(n), sample_event(n + 1000)];
                store
                    .append(&s, ExpectedVersion::of(Version(n * 2)), events)
                    .await
                    .expect("own stream");
            }
        }));
    }
    let hot = stream("hot");
    for contender in 0..CONTENDERS {
        let store = store.clone();
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            while written < APPENDS {
                let version = store.read_stream(&hot, Version::NONE).await.expect("read").len();
                let expected = ExpectedVersion::of(Version(version as u64));
                match store.append(&hot, expected, vec![sample_event(contender)]).await {
                    Ok(_) => written += 1,
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(other) => panic!("contended append failed: {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender task");
    }
    let new = store.read_all(start, usize::MAX).await.expect("read_all");
    let expected_count = WRITERS * APPENDS * 2 + CONTENDERS * APPENDS;
    assert_eq!(new.len() as u64, expected_count, "every acknowledged event is stored once");
    let positions: Vec<u64> = new.iter().map(|e| e.position.0).collect();
    assert!(positions.windows(2).all(|w| w[1] == w[0] + 1), "positions dense and increasing");
    let mut versions: BTreeMap<&StreamId, Vec<u64>> = BTreeMap::new();
    for event in &new {
        versions.entry(&event.stream).or_default().push(event.version.0);
    }
    for (s, versions) in versions {
        let dense: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, dense, "stream {s} has versions 1..n in position order");
    }
    let ids: HashSet<_> = new.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(ids.len(), new.len(), "event ids are unique");
}

async fn reopened_store_keeps_everything<S: EventStore>(store: &S, before: &[RecordedEvent]) {
    let after = read_everything(store).await;
    assert_eq!(after, before, "a reopened store reads exactly what was committed");
    assert_eq!(store.head(), before.last().map_or(Position::START, |e| e.position));
    let s = stream("after-reopen");
    let outcome =
        store.append(&s, ExpectedVersion::NoStream, vec![sample_event(1)]).await.expect("append");
    assert_eq!(outcome.first_position.0, before.len() as u64 + 1, "positions continue");
}

async fn events_are_read_by_position<S: EventStore>(store: &S) {
    let all = read_everything(store).await;
    let wanted = [Position(5), Position(2), Position(9), Position(2), Position(1_000_000)];
    let found = store.read_positions(&wanted).await.expect("read_positions");
    let expected: Vec<RecordedEvent> = [2, 5, 9].iter().map(|p| all[p - 1].clone()).collect();
    assert_eq!(
        found, expected,
        "events by position, in position order, once each, unknown ones left out"
    );
    assert!(store.read_positions(&[]).await.expect("read_positions").is_empty());
}

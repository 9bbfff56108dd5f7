//! The event store contract: what every [`EventStore`] must do, checked on a real instance.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use strata::{
    CommandOutcome, EventMetadata, EventStore, ExpectedVersion, IdempotencyClaim,
    IdempotencyRecord, IdempotencyStore, NewEvent, Position, RecordedEvent, Snapshot, StoreError,
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
    claimed_appends_record_their_key_with_their_events(&store).await;
    each_stored_type_and_schema_version_is_listed_once(&store).await;
    the_newest_snapshot_of_a_stream_is_kept(&store).await;
    let store = Arc::new(store);
    concurrent_appenders_lose_nothing(&store).await;
    racing_appends_at_one_version_let_exactly_one_win(&store).await;
    one_key_claimed_at_once_acts_once(&store).await;
    let before = read_everything(store.as_ref()).await;
    drop(store);
    if factory.durable() {
        let reopened = factory.open().await;
        reopened_store_keeps_everything(&reopened, &before).await;
        let kept = reopened.get("claim-1").await.expect("get");
        assert!(
            kept.is_some_and(|r| r.appended.is_some()),
            "idempotency records survive reopening"
        );
        let snapshot = reopened.read_snapshot(&stream("snapshotted")).await.expect("read");
        assert_eq!(snapshot.map(|s| s.version), Some(Version(20)), "snapshots survive reopening");
    }
}

/// The whole log, read in pages of 97 events (so that pages end at no round number).
pub async fn read_everything<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
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
    let fresh = sample_event(10);
    let batch = vec![fresh.clone(), duplicate];
    match store.append(&s, ExpectedVersion::NoStream, batch).await {
        Err(StoreError::DuplicateEventId(id)) => assert_eq!(id, existing.event_id),
        other => panic!("a duplicate event id must be refused, got {other:?}"),
    }
    assert_eq!(store.head(), head, "no event of a refused append is stored");
    assert!(store.read_stream(&s, Version::NONE).await.expect("read").is_empty());
    // Nor is any of its ids taken: the event that came before the duplicate can be appended.
    store
        .append(&s, ExpectedVersion::NoStream, vec![fresh])
        .await
        .expect("the id of an event whose append was refused is free");
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

fn claim(key: &str, fingerprint: &str) -> IdempotencyClaim {
    IdempotencyClaim { key: key.to_owned(), fingerprint: fingerprint.to_owned(), recorded: None }
}

async fn claimed_appends_record_their_key_with_their_events<S: EventStore + IdempotencyStore>(
    store: &S,
) {
    assert_eq!(store.get("claim-1").await.expect("get"), None, "no record before the append");
    let s = stream("claimed");
    let first = claim("claim-1", "digest-1");
    let events = vec![sample_event(1), sample_event(2)];
    let outcome = store
        .append_claimed(&s, ExpectedVersion::NoStream, events, Some(&first))
        .await
        .expect("a claimed append");
    let recorded = IdempotencyRecord {
        fingerprint: "digest-1".to_owned(),
        appended: Some(CommandOutcome {
            stream: s.clone(),
            version: outcome.version,
            position: Some(outcome.last_position),
            replayed: false,
        }),
        answer: None,
    };
    assert_eq!(store.get("claim-1").await.expect("get"), Some(recorded.clone()));

    // The key is taken: another append under it, even to another stream, writes nothing.
    let head = store.head();
    let other = stream("claimed-again");
    match store
        .append_claimed(&other, ExpectedVersion::Any, vec![sample_event(3)], Some(&first))
        .await
    {
        Err(StoreError::KeyClaimed { key, record }) => {
            assert_eq!(key, "claim-1");
            assert_eq!(*record, recorded, "a taken key answers with its record");
        }
        other => panic!("a second append under one key must be refused, got {other:?}"),
    }
    assert_eq!(store.head(), head, "a refused claimed append moves nothing");
    assert!(store.read_stream(&other, Version::NONE).await.expect("read").is_empty());

    // A claimed append that is refused records no key: events and key go together.
    let stale = claim("claim-stale", "digest-2");
    let refused =
        store.append_claimed(&s, ExpectedVersion::NoStream, vec![sample_event(4)], Some(&stale));
    assert!(matches!(refused.await, Err(StoreError::Conflict { .. })));
    let repeated = sample_event(5);
    let duplicate = claim("claim-duplicate", "digest-3");
    let events = vec![repeated.clone()];
    store.append(&stream("taken-id"), ExpectedVersion::Any, events).await.expect("append");
    let refused =
        store.append_claimed(&other, ExpectedVersion::Any, vec![repeated], Some(&duplicate));
    assert!(matches!(refused.await, Err(StoreError::DuplicateEventId(_))));
    for key in ["claim-stale", "claim-duplicate"] {
        assert_eq!(store.get(key).await.expect("get"), None, "{key}: no events, no record");
    }

    // An answer stored for a request that appended nothing: the first one wins, and it
    // takes the key from later appends.
    store.put_answer("refused", "digest-4", b"first".to_vec()).await.expect("put");
    store.put_answer("refused", "digest-5", b"second".to_vec()).await.expect("put again");
    let stored = store.get("refused").await.expect("get").expect("a stored answer");
    assert_eq!(
        (stored.fingerprint.as_str(), stored.answer.as_deref()),
        ("digest-4", Some(&b"first"[..]))
    );
    let refused_key = claim("refused", "digest-4");
    let late = store.append_claimed(
        &other,
        ExpectedVersion::Any,
        vec![sample_event(6)],
        Some(&refused_key),
    );
    match late.await {
        Err(StoreError::KeyClaimed { record, .. }) => assert_eq!(record.appended, None),
        other => panic!("a key with a stored answer must be refused, got {other:?}"),
    }

    // Expiry forgets keys recorded before a time, a few at a time, and nothing younger.
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.expire(past, 10).await.expect("expire"), 0, "young keys are kept");
    store.put_answer("expiring-1", "d", b"a".to_vec()).await.expect("put");
    store.put_answer("expiring-2", "d", b"b".to_vec()).await.expect("put");
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.expire(later, 1).await.expect("expire"), 1, "expiry honours its limit");
    let mut forgotten = 1;
    loop {
        let count = store.expire(later, 1).await.expect("expire");
        if count == 0 {
            break;
        }
        forgotten += count;
    }
    assert_eq!(forgotten, 4, "every key recorded before the time is forgotten");
    for key in ["claim-1", "refused", "expiring-1", "expiring-2"] {
        assert_eq!(store.get(key).await.expect("get"), None, "{key} expired");
    }
    let again =
        store.append_claimed(&other, ExpectedVersion::Any, vec![sample_event(7)], Some(&first));
    again.await.expect("an expired key can be used again");
}

async fn each_stored_type_and_schema_version_is_listed_once<S: EventStore>(store: &S) {
    let mut newer = sample_event(1);
    newer.schema_version = 2;
    store.append(&stream("schemas"), ExpectedVersion::Any, vec![newer]).await.expect("append");
    let mut types = store.event_types().await.expect("event_types");
    types.sort_unstable();
    assert_eq!(types, [("Sample".to_owned(), 1), ("Sample".to_owned(), 2)]);
}

async fn the_newest_snapshot_of_a_stream_is_kept<S: EventStore>(store: &S) {
    let s = stream("snapshotted");
    assert_eq!(store.read_snapshot(&s).await.expect("read"), None);
    let at = |version, state: &[u8]| Snapshot {
        version: Version(version),
        format: 3,
        state: state.to_vec(),
    };
    store.write_snapshot(&s, &at(10, b"ten")).await.expect("write");
    assert_eq!(store.read_snapshot(&s).await.expect("read"), Some(at(10, b"ten")));
    store.write_snapshot(&s, &at(5, b"five")).await.expect("write an older one");
    assert_eq!(
        store.read_snapshot(&s).await.expect("read"),
        Some(at(10, b"ten")),
        "the newer stays"
    );
    store.write_snapshot(&s, &at(20, b"twenty")).await.expect("write a newer one");
    assert_eq!(store.read_snapshot(&s).await.expect("read"), Some(at(20, b"twenty")));
    assert_eq!(store.read_snapshot(&stream("other")).await.expect("read"), None, "per stream");
    let reformatted = Snapshot { version: Version(20), format: 4, state: b"new shape".to_vec() };
    store.write_snapshot(&s, &reformatted).await.expect("write another format");
    let stored = store.read_snapshot(&s).await.expect("read");
    assert_eq!(stored, Some(reformatted), "another format replaces one of the same version");
}

async fn racing_appends_at_one_version_let_exactly_one_win<S: EventStore>(store: &Arc<S>) {
    const RACERS: u64 = 20;
    let race = stream("race");
    let start = tokio::sync::Barrier::new(RACERS as usize);
    let start = Arc::new(start);
    let mut tasks = Vec::new();
    for racer in 0..RACERS {
        let (store, race, start) = (store.clone(), race.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.append(&race, ExpectedVersion::NoStream, vec![sample_event(racer)]).await
        }));
    }
    let (mut won, mut conflicted) = (0, 0);
    for task in tasks {
        match task.await.expect("racer") {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => conflicted += 1,
            Err(other) => panic!("a racing append failed otherwise: {other}"),
        }
    }
    assert_eq!((won, conflicted), (1, RACERS - 1), "exactly one append at one version wins");
    assert_eq!(store.read_stream(&race, Version::NONE).await.expect("read").len(), 1);
}

async fn one_key_claimed_at_once_acts_once<S: EventStore + IdempotencyStore>(store: &Arc<S>) {
    const RACERS: u64 = 8;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let mut tasks = Vec::new();
    for racer in 0..RACERS {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            // Each racer appends to a stream of its own, as retries with generated ids would.
            let own = stream(&format!("keyed-{racer}"));
            start.wait().await;
            let events = vec![sample_event(racer)];
            store
                .append_claimed(
                    &own,
                    ExpectedVersion::NoStream,
                    events,
                    Some(&claim("shared", "d")),
                )
                .await
        }));
    }
    let mut winners = Vec::new();
    let mut records = Vec::new();
    for task in tasks {
        match task.await.expect("racer") {
            Ok(outcome) => winners.push(outcome),
            Err(StoreError::KeyClaimed { record, .. }) => records.push(record.appended),
            Err(other) => panic!("a racing claimed append failed otherwise: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "one key claimed at once appends exactly once");
    let won = &winners[0];
    for appended in records {
        let appended = appended.expect("the losers see where the winner appended");
        assert_eq!(appended.position, Some(won.last_position));
    }
}

//! A follower reads a stream back into its own store: messages stored out of order and
//! repeated (as a batch republished after a dropped connection leaves them) still make a
//! copy with every event once, at its position; a follower started again on that copy goes
//! on from its head, also when the stream was made again; and a stream that does not exist
//! shows as a failure.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use serde_json::json;
use strata::{
    EventMetadata, EventStore, ExpectedVersion, InMemoryEventStore, Position, ProjectionRunner,
    ProjectionState, RecordedEvent, Source, StreamId, Version,
};
use strata_nats::{JetStreamSource, NatsSettings, subject};
use strata_testkit::services;
use strata_testkit::tally::{self, TALLY};

use crate::{DeleteStream, settings};

fn encode(event: &RecordedEvent) -> Vec<u8> {
    let metadata = &event.metadata;
    let body = json!({
        "position": event.position.0, "type_": event.stream.aggregate_type,
        "id": event.stream.id, "version": event.version.0, "event_type": event.event_type,
        "schema_version": event.schema_version, "payload": event.payload,
        "event_id": metadata.event_id, "correlation_id": metadata.correlation_id,
        "recorded_at": metadata.recorded_at,
    });
    serde_json::to_vec(&body).unwrap()
}

fn decode(body: &[u8]) -> Result<RecordedEvent, String> {
    let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let text = |key: &str| body[key].as_str().unwrap().to_owned();
    let number = |key: &str| body[key].as_u64().unwrap();
    let recorded_at: DateTime<Utc> = text("recorded_at").parse().unwrap();
    Ok(RecordedEvent {
        stream: StreamId::new(text("type_"), text("id")),
        version: Version(number("version")),
        position: Position(number("position")),
        event_type: text("event_type"),
        schema_version: number("schema_version") as u32,
        payload: serde_json::from_value(body["payload"].clone()).unwrap(),
        metadata: EventMetadata {
            event_id: text("event_id").parse().unwrap(),
            correlation_id: text("correlation_id"),
            causation_id: None,
            user: None,
            recorded_at,
        },
    })
}

async fn append(store: &InMemoryEventStore, events: u64) {
    for n in 0..events {
        let stream = StreamId::new(TALLY, format!("t{}", n % 30));
        store.append(&stream, ExpectedVersion::Any, vec![tally::added(1)]).await.unwrap();
    }
}

/// Publishes `events` in the order given, each with a message id of its own: a repeat is
/// stored again, as one republished after the duplicate window would be.
async fn publish(context: &jetstream::Context, prefix: &str, events: &[&RecordedEvent], tag: &str) {
    for event in events {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}-{tag}", event.metadata.event_id).as_str());
        let subject = subject(prefix, &event.stream);
        context
            .publish_with_headers(subject, headers, encode(event).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

fn assert_same_log(original: &[RecordedEvent], copied: &[RecordedEvent]) {
    assert_eq!(copied.len(), original.len());
    for (a, b) in original.iter().zip(copied) {
        assert_eq!(
            (a.position, &a.stream, a.version, &a.payload, a.metadata.event_id),
            (b.position, &b.stream, b.version, &b.payload, b.metadata.event_id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_copies_a_disordered_stream_with_repeats_and_goes_on_after_a_restart() {
    let Some(fixture) = services::nats() else { return };
    let settings = settings(&fixture);
    let _cleanup = DeleteStream(fixture.clone());
    let context = jetstream::new(async_nats::connect(&settings.url).await.unwrap());
    context.create_stream(config_of(&settings)).await.unwrap();

    let writer = InMemoryEventStore::new();
    append(&writer, 1_600).await;
    let log = writer.read_all(Position::START, 10_000).await.unwrap();
    // Each run of ten stored backwards, and positions 100 to 119 stored again later.
    let mut disordered: Vec<&RecordedEvent> = Vec::new();
    for run in log.chunks(10) {
        disordered.extend(run.iter().rev());
    }
    publish(&context, &settings.subject_prefix, &disordered, "first").await;
    publish(&context, &settings.subject_prefix, &log[99..119].iter().collect::<Vec<_>>(), "again")
        .await;

    let copy = Arc::new(InMemoryEventStore::new());
    let source = JetStreamSource::connect(&settings, decode).await.unwrap();
    let follower = ProjectionRunner::new("replica").spawn_follower("source", source, copy.clone());
    follower.wait_for(Position(1_600), Duration::from_secs(30)).await.unwrap();
    assert_same_log(&log, &copy.read_all(Position::START, 10_000).await.unwrap());
    let status = follower.status().await.unwrap();
    assert_eq!((status.lag_events, status.status), (0, ProjectionState::Running), "{status:?}");
    follower.stop();

    // Started again on its copy, a follower reads from near its head, not from the start.
    append(&writer, 400).await;
    let log = writer.read_all(Position::START, 10_000).await.unwrap();
    publish(&context, &settings.subject_prefix, &log[1_600..].iter().collect::<Vec<_>>(), "first")
        .await;
    let source = JetStreamSource::connect(&settings, decode).await.unwrap();
    let follower = ProjectionRunner::new("replica").spawn_follower("source", source, copy.clone());
    follower.wait_for(Position(2_000), Duration::from_secs(30)).await.unwrap();
    assert_same_log(&log, &copy.read_all(Position::START, 10_000).await.unwrap());
    follower.stop();

    // The stream made again, holding only what came after: read from its start.
    context.delete_stream(&settings.stream).await.unwrap();
    context.create_stream(config_of(&settings)).await.unwrap();
    append(&writer, 100).await;
    let log = writer.read_all(Position::START, 10_000).await.unwrap();
    publish(&context, &settings.subject_prefix, &log[2_000..].iter().collect::<Vec<_>>(), "new")
        .await;
    let source = JetStreamSource::connect(&settings, decode).await.unwrap();
    let follower = ProjectionRunner::new("replica").spawn_follower("source", source, copy.clone());
    follower.wait_for(Position(2_100), Duration::from_secs(30)).await.unwrap();
    assert_same_log(&log, &copy.read_all(Position::START, 10_000).await.unwrap());
    follower.stop();
}

fn config_of(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stream_that_does_not_exist_shows_as_a_failure() {
    let Some(fixture) = services::nats() else { return };
    let settings = settings(&fixture);
    let copy = Arc::new(InMemoryEventStore::new());
    let source = JetStreamSource::connect(&settings, decode).await.unwrap();
    let follower = ProjectionRunner::new("replica").spawn_follower("source", source, copy);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = follower.status().await.unwrap();
        if status.status == ProjectionState::Failed {
            let error = status.error.unwrap_or_default();
            assert!(error.contains(&settings.stream), "{error}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never failed: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_handed_over_but_not_kept_are_handed_over_again() {
    let Some(fixture) = services::nats() else { return };
    let settings = settings(&fixture);
    let _cleanup = DeleteStream(fixture.clone());
    let context = jetstream::new(async_nats::connect(&settings.url).await.unwrap());
    context.create_stream(config_of(&settings)).await.unwrap();
    let writer = InMemoryEventStore::new();
    append(&writer, 60).await;
    let log = writer.read_all(Position::START, 1_000).await.unwrap();
    publish(&context, &settings.subject_prefix, &log.iter().collect::<Vec<_>>(), "first").await;

    let mut source = JetStreamSource::connect(&settings, decode).await.unwrap();
    let first = source.pull(Position::START, 40).await.unwrap();
    assert_eq!(first.events.len(), 40);
    // The appends failed: the follower asks again from where its store stands.
    let again = source.pull(Position::START, 40).await.unwrap();
    let positions: Vec<u64> = again.events.iter().map(|event| event.position.0).collect();
    assert_eq!(positions, (1..=40).collect::<Vec<u64>>());
    let rest = source.pull(Position(40), 40).await.unwrap();
    assert_eq!(rest.events.first().map(|event| event.position), Some(Position(41)));
    assert_eq!(rest.events.len(), 20);
}

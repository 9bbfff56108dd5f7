//! Two nodes deliver one log to JetStream while whoever holds the lease is killed every few
//! milliseconds: batches are cut off between publishing and moving the checkpoint, and the
//! next owner publishes them again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use strata::{
    EventStore, ExpectedVersion, InMemoryEventStore, InMemoryViewManager, Position,
    ProjectionRunner, RecordedEvent, StreamId,
};
use strata_nats::JetStreamOutlet;
use strata_testkit::leases::SharedLeases;
use strata_testkit::services;

use crate::{DeleteStream, settings};
use strata_testkit::tally::{self, TALLY};

const EVENTS: u64 = 3_000;

fn body(event: &RecordedEvent) -> Result<Vec<u8>, String> {
    Ok(format!("{{\"position\":{},\"event_id\":\"{}\"}}", event.position, event.metadata.event_id)
        .into_bytes())
}

async fn append(store: &InMemoryEventStore, n: u64) -> Position {
    let stream = StreamId::new(TALLY, format!("t{}", n % 30));
    store.append(&stream, ExpectedVersion::Any, vec![tally::added(1)]).await.unwrap().last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_stream_delivers_every_event_once_in_order() {
    let Some(fixture) = services::nats() else { return };
    let settings = settings(&fixture);
    let _cleanup = DeleteStream(fixture.clone());
    let store = Arc::new(InMemoryEventStore::new());
    for n in 0..EVENTS / 2 {
        append(&store, n).await;
    }
    // The checkpoint store both nodes share, as they would share a database.
    let views = Arc::new(InMemoryViewManager::new());
    let leases = SharedLeases::new();
    let name = "nats_publisher";
    let mut nodes = Vec::new();
    for node in ["a", "b"] {
        let outlet = Arc::new(JetStreamOutlet::connect(&settings, body).await.unwrap());
        nodes.push(ProjectionRunner::new(node).spawn_delivery(
            name,
            outlet,
            store.clone(),
            views.clone(),
            leases.node(node),
        ));
    }

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in EVENTS / 2..EVENTS {
                append(&store, n).await;
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut seed = Instant::now().elapsed().subsec_nanos() | 1;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let head = Position(EVENTS);
    while !writer.is_finished() || nodes.iter().any(|node| node.position() < head) {
        assert!(
            Instant::now() < deadline,
            "never delivered everything; {kills} kills (seed {seed})"
        );
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        tokio::time::sleep(Duration::from_micros(1_000 + u64::from(seed % 10_000))).await;
        if leases.kill_holder(name).is_some() {
            kills += 1;
        }
    }
    assert!(kills >= 10, "only {kills} kills happened: the test did not test");

    // The server kept each event once: repeats carried the same message id.
    let context = jetstream::new(async_nats::connect(&settings.url).await.unwrap());
    let mut stream = context.get_stream(&settings.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, EVENTS, "after {kills} kills");

    // A consumer reads every event once, in position order, each on its stream's subject.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut next = 1;
    while next <= EVENTS {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("no message after position {}", next - 1))
            .unwrap()
            .unwrap();
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).unwrap().to_string();
        if !seen.insert(id.clone()) {
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["position"], next, "in order");
        assert_eq!(body["event_id"], id.as_str(), "the message id is the event id");
        assert_eq!(
            message.subject.as_str(),
            format!("{}.tally.t{}", settings.subject_prefix, (next - 1) % 30)
        );
        next += 1;
    }
    for node in &nodes {
        node.stop();
    }
}

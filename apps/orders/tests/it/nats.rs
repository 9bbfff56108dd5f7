//! `strata serve --nats`: every committed event reaches the JetStream stream on its
//! aggregate's subject, in order, with the event id as message id, and with the very object
//! `strata events export` writes for it as the body; the publisher is listed beside the
//! projections.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::{Value, json};
use strata_testkit::services::{self, NatsFixture};

use crate::process::{Server, strata};

/// Deletes the test's stream when the test ends, however it ends.
struct DeleteStream(NatsFixture);

impl Drop for DeleteStream {
    fn drop(&mut self) {
        let (url, stream) = (self.0.url.clone(), self.0.stream.clone());
        let deleted = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = async_nats::connect(url).await.ok()?;
                jetstream::new(client).delete_stream(stream).await.ok()
            })
        });
        if deleted.join().ok().flatten().is_none() {
            eprintln!("could not delete the test stream {}", self.0.stream);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_jetstream_as_export_lines_in_order() {
    let Some(nats) = services::nats() else { return };
    let _cleanup = DeleteStream(nats.clone());
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let server = Server::spawn(&[
        "--data-dir",
        &dir_arg,
        "--nats",
        &nats.url,
        "--nats-stream",
        &nats.stream,
        "--nats-subject-prefix",
        &nats.subject_prefix,
    ]);
    let commands = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        ("/products/tea/restock", json!({"qty": 10})),
        (
            "/orders",
            json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 2}]}),
        ),
    ];
    let mut head = 0;
    for (path, body) in commands {
        let (status, answer) = server.send("POST", path, Some(body)).await;
        assert!(status < 300, "{path}: {status} {answer}");
        head = answer["position"].as_u64().unwrap();
    }
    let started = Instant::now();
    loop {
        let (_, list) = server.send("GET", "/admin/projections", None).await;
        let publisher = list
            .as_array()
            .and_then(|list| list.iter().find(|p| p["name"] == "nats_publisher").cloned())
            .expect("the publisher is listed with the projections");
        if publisher["position"].as_u64() >= Some(head) {
            assert_eq!(publisher["status"], "running", "{publisher}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never published: {publisher}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);

    let (code, export, err) = strata(&["events", "export", "--data-dir", &dir_arg]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> =
        export.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len() as u64, head);

    let context = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let stream = context.get_stream(&nats.stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for line in &lines {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a message for every event")
            .unwrap()
            .unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(&body, line, "the body is the export's object, in log order");
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).unwrap();
        assert_eq!(id.as_str(), line["metadata"]["event_id"].as_str().unwrap());
        let subject = format!(
            "{}.{}.{}",
            nats.subject_prefix,
            line["aggregate_type"].as_str().unwrap(),
            line["aggregate_id"].as_str().unwrap()
        );
        assert_eq!(message.subject.as_str(), subject);
    }
}

#[test]
fn bad_nats_settings_stop_serve_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().display().to_string();
    let (code, _, err) = strata(&["serve", "--data-dir", &dir, "--nats-stream", "a.b"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a usable stream name"), "{err}");
    let (code, _, err) = strata(&["serve", "--data-dir", &dir, "--nats-subject-prefix", "a.*"]);
    assert_eq!(code, 2, "{err}");
    let started = Instant::now();
    let (code, _, err) = strata(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--nats",
        "nats://127.0.0.1:1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open the NATS publisher"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "gave up in a bounded time");
}

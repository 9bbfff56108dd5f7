//! `strata serve --nats`: every committed event reaches the JetStream stream on its
//! aggregate's subject, in order, with the event id as message id, and with the very object
//! `strata events export` writes for it as the body; the publisher is listed beside the
//! projections. `strata serve --read-only --source`: a replica fed by that stream serves the
//! writer's views, refuses commands, and goes on after a kill.

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

#[test]
fn bad_replica_settings_stop_serve_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().display().to_string();
    let source = "nats://127.0.0.1:1";
    for args in [
        &["--read-only"][..],
        &["--source", source],
        &["--read-only", "--source", source, "--nats", source],
        &["--read-only", "--source", source, "--store", "memory"],
    ] {
        let (code, _, err) = strata(&[&["serve", "--data-dir", &dir][..], args].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) =
        strata(&["serve", "--read-only", "--source", source, "--store", "postgres://x/y"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a read-only replica keeps its copy of the log in SQLite"), "{err}");
    let started = Instant::now();
    let (code, _, err) = strata(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--read-only",
        "--source",
        source,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the replica's source"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "gave up in a bounded time");
}

/// Sends `commands` to `server`; the position of the last one.
async fn run_commands(server: &Server, commands: &[(&str, Value)]) -> u64 {
    let mut head = 0;
    for (path, body) in commands {
        let (status, answer) = server.send("POST", path, Some(body.clone())).await;
        assert!(status < 300, "{path}: {status} {answer}");
        head = head.max(answer["position"].as_u64().unwrap());
    }
    head
}

/// Every query route of the two servers answers the same once both have reached `head`.
async fn assert_same_views(writer: &Server, replica: &Server, head: u64) {
    let wait = format!("min_position={head}&wait_ms=10000");
    for path in [
        "/customers/ada",
        "/customers/bob",
        "/products/tea",
        "/products/cake",
        "/orders/o1",
        "/orders/o2",
        "/orders?limit=100",
        "/customers/ada/orders?limit=100",
        "/reports/sales?from=2000-01-01&to=2999-12-31",
    ] {
        let join = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{join}{wait}");
        let (status, written) = writer.send("GET", &path, None).await;
        assert_eq!(status, 200, "{path} on the writer: {written}");
        let (status, replicated) = replica.send("GET", &path, None).await;
        assert_eq!(status, 200, "{path} on the replica: {replicated}");
        assert_eq!(replicated, written, "{path}");
    }
}

/// The replica's whole log, as `strata events export` writes it, equals the writer's.
fn assert_same_log(writer_dir: &str, replica_dir: &str) {
    let (code, written, err) = strata(&["events", "export", "--data-dir", writer_dir]);
    assert_eq!(code, 0, "{err}");
    let (code, replicated, err) = strata(&["events", "export", "--data-dir", replica_dir]);
    assert_eq!(code, 0, "{err}");
    assert!(!written.is_empty());
    assert_eq!(replicated, written, "same events at the same positions, ids and times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fed_by_nats_serves_the_writers_views_and_refuses_commands() {
    let Some(nats) = services::nats() else { return };
    let _cleanup = DeleteStream(nats.clone());
    let (writer_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer_dir = writer_dir.path().display().to_string();
    let replica_dir = replica_dir.path().display().to_string();
    let stream_flags =
        ["--nats-stream", &nats.stream, "--nats-subject-prefix", &nats.subject_prefix];
    let writer_args =
        [&["--data-dir", &writer_dir, "--nats", &nats.url][..], &stream_flags].concat();
    let replica_args =
        [&["--read-only", "--source", &nats.url, "--data-dir", &replica_dir][..], &stream_flags]
            .concat();
    let writer = Server::spawn(&writer_args);
    let head = run_commands(
        &writer,
        &[
            ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
            ("/customers", json!({"customer_id": "bob", "name": "Bob", "email": "bob@example.com"})),
            ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
            ("/products", json!({"sku": "cake", "name": "Cake", "price_cents": 300})),
            ("/products/tea/restock", json!({"qty": 10})),
            ("/products/cake/restock", json!({"qty": 5})),
            (
                "/orders",
                json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 2}]}),
            ),
            ("/orders/o1/lines", json!({"sku": "cake", "qty": 1})),
            ("/orders/o1/confirm", json!({})),
            (
                "/orders",
                json!({"order_id": "o2", "customer_id": "bob", "lines": [{"sku": "cake", "qty": 1}]}),
            ),
            ("/orders/o2/cancel", json!({"reason": "changed her mind"})),
        ],
    )
    .await;

    let replica = Server::spawn(&replica_args);
    assert_same_views(&writer, &replica, head).await;

    // Commands are refused and change nothing.
    let order =
        json!({"order_id": "o3", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
    let (status, problem) = replica.send("POST", "/orders", Some(order.clone())).await;
    assert_eq!(status, 405, "{problem}");
    assert_eq!(problem["type"], "urn:strata:problem:read-only", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("read-only"), "{problem}");
    let (status, _) = replica.send("POST", "/orders/o1/cancel", Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 405);
    let (status, _) = replica.send("GET", "/orders/o3", None).await;
    assert_eq!(status, 404);
    // A position the copy does not hold yet is one to wait for, not a client's mistake.
    let ahead = format!("/orders/o1?min_position={}&wait_ms=100", head + 1_000);
    let (status, problem) = replica.send("GET", &ahead, None).await;
    assert_eq!((status, &problem["type"]), (503, &json!("urn:strata:problem:view-not-ready")));

    // The follower is listed with the projections, caught up; no saga runs here.
    let (_, list) = replica.send("GET", "/admin/projections", None).await;
    let names: Vec<&str> =
        list.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(!names.contains(&"fulfilment"), "{names:?}");
    let follower = list.as_array().unwrap().iter().find(|p| p["name"] == "nats_source").unwrap();
    assert_eq!(follower["status"], "running", "{follower}");
    assert!(follower["position"].as_u64() >= Some(head), "{follower}");
    let (status, health) = replica.send("GET", "/health", None).await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");

    // Killed and started again, the replica goes on from its own copy.
    replica.kill_9();
    let head =
        run_commands(&writer, &[("/orders", order), ("/orders/o3/confirm", json!({}))]).await;
    let replica = Server::spawn(&replica_args);
    assert_same_views(&writer, &replica, head).await;
    let path = format!("/orders/o3?min_position={head}&wait_ms=10000");
    assert_eq!(replica.send("GET", &path, None).await, writer.send("GET", &path, None).await);
    drop(replica);
    drop(writer);
    assert_same_log(&writer_dir, &replica_dir);
}

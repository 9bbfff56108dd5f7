//! The real `strata` binary: killed with SIGKILL under load and restarted, it keeps every
//! acknowledged command, and its views equal a rebuild from zero; SIGTERM stops it cleanly;
//! bad command lines exit with a message and code 2.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use orders::views::OrderView;
use serde_json::{Value, json};
use strata::ViewManager;
use strata_sqlite::{SqliteEventStore, SqliteViewManager};

use crate::rebuild::views_equal_a_replay;

/// A `strata serve` child process and an HTTP client for it.
pub struct Server {
    pub child: Child,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let dir = dir.display().to_string();
        Server::spawn(&["--node-id", "process-test", "--data-dir", &dir])
    }

    /// Starts `strata serve` on a free port with `args` added.
    pub fn spawn(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("the server prints where it listens").unwrap();
            if let Some(rest) = line.strip_prefix("strata: listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let client = Client::builder(TokioExecutor::new()).build_http();
        Server { child, base, client }
    }

    /// Sends a request; the answer's status and JSON body (`Null` when there is none).
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = match self.client.request(request.body(Full::new(body)).unwrap()).await {
            Ok(response) => response,
            // A killed server: report it as "no answer" so load generators can stop.
            Err(_) => return (0, Value::Null),
        };
        let status = response.status().as_u16();
        let Ok(collected) = response.into_body().collect().await else { return (0, Value::Null) };
        let bytes = collected.to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill_and_views_equal_a_rebuild() {
    const ORDERS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()));
    let pid = server.child.id().to_string();
    let setup = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        ("/products/tea/restock", json!({"qty": 100})),
    ];
    for (path, body) in setup {
        assert!(server.send("POST", path, Some(body)).await.0 < 300);
    }

    // Load from several clients; kill the server while requests are still in flight.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for client in 0..4 {
        let server = server.clone();
        let acked = acked_tx.clone();
        clients.push(tokio::spawn(async move {
            for n in (client..ORDERS).step_by(4) {
                let id = format!("o{n}");
                let place = json!({"order_id": id, "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
                if server.send("POST", "/orders", Some(place)).await.0 != 201 {
                    return;
                }
                let line = Some(json!({"sku": "tea", "qty": 2}));
                if server.send("POST", &format!("/orders/{id}/lines"), line).await.0 != 200 {
                    return;
                }
                let _ = acked.send(id);
            }
        }));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < ORDERS / 2 {
        acked.push(acked_rx.recv().await.expect("orders are acknowledged"));
    }
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    for client in clients {
        let _ = client.await;
    }
    drop(server);
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }

    // Restart on the same data: every acknowledged order is there, with both its events.
    let server = Server::start(dir.path());
    let (_, health) = server.send("GET", "/health", None).await;
    assert_eq!(health["status"], "ok");
    for id in &acked {
        let (status, events) =
            server.send("GET", &format!("/admin/streams/order/{id}"), None).await;
        assert_eq!(status, 200, "acknowledged order {id} survived");
        assert_eq!(events.as_array().map(Vec::len), Some(2), "both acknowledged events of {id}");
    }
    let (_, projections) = server.send("GET", "/admin/projections", None).await;
    let head = projections[0]["head"].as_u64().unwrap();
    let (status, _) = server
        .send("GET", &format!("/customers/ada/orders?min_position={head}&wait_ms=10000"), None)
        .await;
    assert_eq!(status, 200);
    for projection in ["customers", "products", "orders"] {
        let path = match projection {
            "customers" => "/customers/ada".to_owned(),
            "products" => "/products/tea".to_owned(),
            _ => format!("/orders/{}", acked[0]),
        };
        let (status, _) =
            server.send("GET", &format!("{path}?min_position={head}&wait_ms=10000"), None).await;
        assert_eq!(status, 200, "{projection} caught up after the restart");
    }
    server.kill_9();

    // Replay every view from zero into a fresh view store and compare with the live one.
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let live = SqliteViewManager::open(dir.path()).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let replayed = Arc::new(SqliteViewManager::open(fresh.path()).unwrap());
    let mut stored = Vec::new();
    for n in 0..ORDERS {
        let id = format!("o{n}");
        if live.get::<OrderView>("orders", &id).await.unwrap().is_some() {
            stored.push(id);
        } else {
            assert!(!acked.contains(&id), "acknowledged order {id} has a view");
        }
    }
    views_equal_a_replay(events, &live, replayed, &["ada"], &["tea"], &stored).await;
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let (status, _) = server
        .send(
            "POST",
            "/customers",
            Some(json!({"customer_id": "ada", "name": "Ada", "email": "a@b"})),
        )
        .await;
    assert_eq!(status, 201);
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "SIGTERM ends the server with success, got {exit}");

    let server = Server::start(dir.path());
    let (status, customer) = server.send("GET", "/customers/ada?min_position=1", None).await;
    assert_eq!((status, customer["name"].as_str()), (200, Some("Ada")));
}

#[test]
fn bad_command_lines_exit_2_with_a_message() {
    for store in ["redis://localhost", "mysql://x", "sqlite:"] {
        let output = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--bind", "127.0.0.1:0", "--store", store])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "--store {store}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("strata: error:"), "--store {store}: {stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_strata")).arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

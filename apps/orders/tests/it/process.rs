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

    /// Where it listens, as `http://HOST:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; the answer's status and JSON body (`Null` when there is none).
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send_with(method, path, body, &[]).await
    }

    /// [`send`](Self::send) with extra headers.
    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request =
            hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
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

    /// A `GET` whose answer is text, such as `/metrics`; empty when there is no answer.
    pub async fn text(&self, path: &str) -> String {
        let request = hyper::Request::builder().uri(format!("{}{path}", self.base));
        let Ok(response) =
            self.client.request(request.body(Full::new(Bytes::new())).unwrap()).await
        else {
            return String::new();
        };
        let Ok(collected) = response.into_body().collect().await else { return String::new() };
        String::from_utf8_lossy(&collected.to_bytes()).into_owned()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_retried_after_kill_9_never_acts_twice() {
    const KEYS: usize = 400;
    const PRODUCTS: usize = 4;
    const KILLS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for p in 0..PRODUCTS {
        let product = json!({"sku": format!("p{p}"), "name": "Tea", "price_cents": 450});
        assert_eq!(server.send("POST", "/products", Some(product)).await.0, 201);
    }
    drop(server);

    // Each key restocks one unit: a key that acted twice shows as one unit too many.
    let restock =
        |key: usize| (format!("/products/p{}/restock", key % PRODUCTS), format!("restock-{key}"));
    let answers: Arc<std::sync::Mutex<Vec<Option<Value>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; KEYS]));
    let mut round = 0;
    loop {
        let pending: Vec<usize> =
            (0..KEYS).filter(|&key| answers.lock().unwrap()[key].is_none()).collect();
        let kill = round < KILLS;
        if !kill && pending.is_empty() {
            break;
        }
        round += 1;
        let server = Arc::new(Server::start(dir.path()));
        let pid = server.child.id().to_string();
        let queue = Arc::new(std::sync::Mutex::new(pending.into_iter()));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (server, queue, answers) = (server.clone(), queue.clone(), answers.clone());
            let answered = answered.clone();
            clients.push(tokio::spawn(async move {
                loop {
                    let Some(key) = queue.lock().unwrap().next() else { return };
                    let (path, name) = restock(key);
                    let headers = [("idempotency-key", name.as_str())];
                    let (status, body) =
                        server.send_with("POST", &path, Some(json!({"qty": 1})), &headers).await;
                    match status {
                        0 => return, // killed
                        200 => {
                            answers.lock().unwrap()[key] = Some(body);
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        other => panic!("key {key} answered {other}: {body}"),
                    }
                }
            }));
        }
        if kill {
            // At a random point while requests are in flight: after 1 to 30 answers.
            let target = fastrand::usize(1..=30);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while answered.load(std::sync::atomic::Ordering::SeqCst) < target {
                assert!(tokio::time::Instant::now() < deadline, "round {round} made no progress");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        }
        for client in clients {
            client.await.unwrap();
        }
    }
    assert!(round > KILLS, "every key was answered within the rounds after the kills");

    // Every key once more, against the last server: the first answer, nothing appended.
    let server = Server::start(dir.path());
    let (_, before) = server.send("GET", "/admin/projections", None).await;
    for key in 0..KEYS {
        let (path, name) = restock(key);
        let headers = [("idempotency-key", name.as_str())];
        let (status, body) =
            server.send_with("POST", &path, Some(json!({"qty": 1})), &headers).await;
        assert_eq!(status, 200);
        assert_eq!(
            Some(&body),
            answers.lock().unwrap()[key].as_ref(),
            "key {key}: the first answer"
        );
    }
    let (_, after) = server.send("GET", "/admin/projections", None).await;
    assert_eq!(before[0]["head"], after[0]["head"], "the retries appended nothing");
    for p in 0..PRODUCTS {
        let (_, events) = server.send("GET", &format!("/admin/streams/product/p{p}"), None).await;
        let restocks = events.as_array().unwrap().len() - 1;
        assert_eq!(restocks, KEYS / PRODUCTS, "product p{p}: every key restocked exactly once");
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, _) = server
        .send(
            "POST",
            "/customers",
            Some(json!({"customer_id": "ada", "name": "Ada", "email": "a@b"})),
        )
        .await;
    assert_eq!(status, 201);
    // A query waiting for a position the view will not reach for a long time.
    let server = Arc::new(server);
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let path = "/customers/ada?min_position=999999&wait_ms=30000";
            let (status, body) = server.send("GET", path, None).await;
            (status, body, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let pid = server.child.id().to_string();
    let signalled = std::time::Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let (status, body, waited) = waiting.await.unwrap();
    assert_eq!(status, 503, "the waiting query is answered at once: {body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("shutting down"), "{body}");
    assert!(waited < std::time::Duration::from_secs(5), "it waited {waited:?}");
    let mut server = Arc::into_inner(server).expect("the query task is done");
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "SIGTERM ends the server with success, got {exit}");
    assert!(signalled.elapsed() < std::time::Duration::from_secs(5), "stopped within 5 s");

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

/// Fills `dir` with a customer, a product and `orders` orders of ten events each, appended
/// straight to the store by 32 writers at once.
async fn populate(dir: &Path, orders: usize) -> u64 {
    use orders::domain::customer::CustomerRegistered;
    use orders::domain::order::{LineAdded, OrderPlaced};
    use orders::domain::{CustomerEvent, OrderEvent, OrderLine, OrdersEvent};
    use strata::{DomainEvent, EventMetadata, EventStore, ExpectedVersion, StreamId};

    let store = Arc::new(SqliteEventStore::open(dir).unwrap());
    let registered = OrdersEvent::Customer(CustomerEvent::CustomerRegistered(CustomerRegistered {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }));
    let metadata = || EventMetadata::new("populate", None);
    store
        .append(
            &StreamId::new("customer", "ada"),
            ExpectedVersion::NoStream,
            vec![registered.to_new_event(metadata()).unwrap()],
        )
        .await
        .unwrap();
    let mut writers = Vec::new();
    for writer in 0..32 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in (writer..orders).step_by(32) {
                let line = |qty| OrderLine { sku: "tea".into(), qty, price_cents: 450 };
                let placed = OrderPlaced {
                    customer_id: "ada".into(),
                    lines: vec![line(1)],
                    payment_method: "unknown".into(),
                    shipping_address: None,
                };
                let mut events = vec![
                    OrdersEvent::Order(OrderEvent::OrderPlaced(placed))
                        .to_new_event(metadata())
                        .unwrap(),
                ];
                for qty in 2..11 {
                    let added = LineAdded { customer_id: "ada".into(), line: line(qty) };
                    events.push(
                        OrdersEvent::Order(OrderEvent::LineAdded(added))
                            .to_new_event(metadata())
                            .unwrap(),
                    );
                }
                store
                    .append(
                        &StreamId::new("order", format!("p{n}")),
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.head().0
}

/// Polls the server's projections until `done` holds for them, or panics after a while.
async fn until_projections(
    server: &Server,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (status, body) = server.send("GET", "/admin/projections", None).await;
        if status == 200 && done(body.as_array().map(Vec::as_slice).unwrap_or_default()) {
            return body.as_array().cloned().unwrap_or_default();
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_mid_batch_and_mid_rebuild_resumes_without_a_gap_or_a_double() {
    let dir = tempfile::tempdir().unwrap();
    let head = populate(dir.path(), 3_000).await;

    // Killed while the projections replay the log into empty views, mid-batch.
    let server = Server::start(dir.path());
    until_projections(&server, "started replaying", |all| {
        all.iter().any(|p| p["position"].as_u64().is_some_and(|at| at > 0 && at < head))
    })
    .await;
    server.kill_9();

    let server = Server::start(dir.path());
    until_projections(&server, "caught up", |all| all.iter().all(|p| p["position"] == head)).await;
    for name in orders::views::PROJECTIONS {
        let (status, _) = server
            .send("POST", &format!("/admin/projections/{name}/rebuild"), Some(json!({})))
            .await;
        assert_eq!(status, 202);
    }
    // Killed while the rebuilds fill their fresh storage.
    let rebuilding = until_projections(&server, "rebuilt part way", |all| {
        all.iter().any(|p| p["rebuild"]["position"].as_u64().is_some_and(|at| at > 0 && at < head))
    })
    .await;
    server.kill_9();
    let unfinished = rebuilding.iter().filter(|p| p["status"] == "rebuilding").count();
    assert!(unfinished > 0);

    // Restarted, the interrupted rebuilds resume and swap in.
    let server = Server::start(dir.path());
    until_projections(&server, "finished the rebuilds", |all| {
        all.iter()
            .all(|p| p["status"] == "running" && p["rebuild"].is_null() && p["position"] == head)
    })
    .await;
    let (status, order) = server.send("GET", "/orders/p7", None).await;
    assert_eq!((status, order["total_cents"].as_i64()), (200, Some(450 * 55)), "every line once");
    server.kill_9();

    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let live = SqliteViewManager::open(dir.path()).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let replayed = Arc::new(SqliteViewManager::open(fresh.path()).unwrap());
    let ids: Vec<String> = (0..3_000).step_by(97).map(|n| format!("p{n}")).collect();
    views_equal_a_replay(events, &live, replayed, &["ada"], &[], &ids).await;
}

/// `strata auth add-token` for `subject` with `role` into `file`: exit code, stdout, stderr.
pub fn add_token(file: &str, subject: &str, role: &str) -> (i32, String, String) {
    strata(&["auth", "add-token", "--subject", subject, "--role", role, "--auth-file", file])
}

pub fn strata(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("STRATA_AUTH_FILE")
        .env_remove("STRATA_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_are_listed_as_a_table_and_rebuilt_offline_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let head = populate(dir.path(), 200).await;
    let store = format!("sqlite:{}", dir.path().display());

    let (code, out, err) = strata(&["projections", "list", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("| projection") && lines[0].contains("| parked |"), "{out}");
    assert_eq!(head, 2_001);
    for name in orders::views::PROJECTIONS {
        let row = lines
            .iter()
            .find(|line| line.starts_with(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("{name} listed: {out}"));
        let cells: Vec<&str> =
            row.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect();
        assert_eq!(
            (cells[1], cells[2], cells[4], cells[5]),
            ("0", "2,001", "stopped", "0"),
            "{row}"
        );
        assert!(
            cells[3].starts_with("2,001 (") && cells[3].ends_with(" s)"),
            "lag in events and seconds: {row}"
        );
    }

    let (code, out, err) = strata(&["projections", "rebuild", "orders", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("rebuilding orders:") && err.contains("events/s") && err.contains("ETA"),
        "{err}"
    );
    assert!(out.contains("rebuilt orders up to position 2,001"), "{out}");
    let (_, listed, _) = strata(&["projections", "list", "--store", &store]);
    let orders_row = listed.lines().find(|line| line.starts_with("| orders ")).unwrap().to_owned();
    let cells: Vec<&str> =
        orders_row.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect();
    assert_eq!((cells[1], cells[2], cells[3]), ("2,001", "2,001", "0"), "{orders_row}");

    let (code, _, err) = strata(&["projections", "rebuild", "nope", "--store", &store]);
    assert_eq!(code, 2);
    assert!(err.contains("no projection \"nope\"") && err.contains("sales_daily"), "{err}");
    // The saga is listed, but rebuilt only where it runs.
    assert!(listed.lines().any(|line| line.starts_with("| fulfilment ")), "{listed}");
    let (code, _, err) = strata(&["projections", "rebuild", "fulfilment", "--store", &store]);
    assert_eq!(code, 2);
    assert!(
        err.contains("is a saga") && err.contains("/admin/projections/fulfilment/rebuild"),
        "{err}"
    );

    // Beside a running service: listed as running; a rebuild is refused with what to do.
    let server = Server::start(dir.path());
    server.send("GET", &format!("/orders/p1?min_position={head}&wait_ms=10000"), None).await;
    let (code, listed, err) = strata(&["projections", "list", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(listed.lines().filter(|line| line.contains("| running |")).count() == 7, "{listed}");
    let (code, _, err) = strata(&["projections", "rebuild", "orders", "--store", &store]);
    assert_eq!(code, 1);
    assert!(err.contains("stop the service first"), "{err}");
    server.kill_9();
}

/// The first log lines `strata serve` writes on a standard error that is not a terminal.
fn first_log_lines(format: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--store", "memory", "--bind", "127.0.0.1:0", "--log-format", format])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok).take(3) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<String> = (0..3)
        .map(|_| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            lines_rx.recv_timeout(left).expect("three log lines within 10 s")
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn logs_are_json_lines_or_text_without_colour_codes_off_a_terminal() {
    for line in first_log_lines("json") {
        let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(parsed["level"].is_string() && parsed["fields"]["message"].is_string(), "{line}");
    }
    for line in first_log_lines("text") {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
        assert!(line.contains("INFO"), "{line}");
    }
}

#[test]
fn an_unreachable_database_ends_serve_with_exit_1_naming_where_it_tried_once() {
    let output = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--bind", "127.0.0.1:0", "--store", "postgres://postgres@127.0.0.1:1/test"])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.matches("error connecting to server").count(), 1, "said once: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening"), "never said it was listening: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_carries_its_correlation_id() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--store", "memory", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info,strata=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = stdout.next().expect("the server says where it listens").unwrap();
        if let Some(rest) = line.strip_prefix("strata: listening on ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = json!({"customer_id": "ada", "name": "Ada Lovelace", "email": "ada@example.com"});
    let request = hyper::Request::post(format!("{base}/customers"))
        .header("content-type", "application/json")
        .header("x-correlation-id", "log-trace-7")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 201);

    // Every line logged until the request is answered: those written in the request's span
    // (any line inside a "request" span) must carry its id, and none may hold its data.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut logged: Vec<Value> = Vec::new();
    while !logged.iter().any(|line| line["fields"]["message"] == "request answered") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines_rx.recv_timeout(left).expect("the request is logged within 10 s");
        logged.push(serde_json::from_str(&line).unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let request_span = |line: &Value| -> Option<Value> {
        let spans = line["spans"].as_array()?;
        spans.iter().find(|span| span["name"] == "request").cloned()
    };
    let caused: Vec<&Value> = logged.iter().filter(|line| request_span(line).is_some()).collect();
    let messages: Vec<&str> =
        caused.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    assert!(messages.contains(&"command handled"), "the command logs in the request: {messages:?}");
    for line in &caused {
        let span = request_span(line).unwrap();
        assert_eq!(span["correlation_id"], "log-trace-7", "{line}");
    }
    for line in &logged {
        assert!(!line.to_string().contains("Lovelace"), "no personal data in logs: {line}");
    }
    let answered = caused.iter().find(|l| l["fields"]["message"] == "request answered").unwrap();
    assert_eq!(answered["fields"]["status"], 201);
    assert_eq!(answered["span"]["route"], "/customers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_added_once_kept_as_hashes_and_checked_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let file_arg = file.to_str().unwrap();
    let add = |subject: &str, role: &str| add_token(file_arg, subject, role);
    let (code, out, err) = add("alice", "write");
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().to_owned();
    assert!(token.starts_with("st_") && token.len() > 40, "{out}");
    let (code, out, _) = add("ops", "admin");
    assert_eq!(code, 0);
    let admin = out.lines().last().unwrap().to_owned();
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token) && !stored.contains(&admin), "only hashes are kept");
    assert!(stored.contains("alice") && stored.contains(&strata_http::auth::token_hash(&token)));
    for (args, says) in [
        (vec!["--subject", " ", "--role", "read"], "--subject"),
        (vec!["--subject", "bob", "--role", "root"], "role"),
    ] {
        let mut all = vec!["auth", "add-token", "--auth-file", file_arg];
        all.extend(args);
        let (code, _, err) = strata(&all);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{err}");
    }

    let server = Server::spawn(&["--store", "memory", "--auth-file", file_arg]);
    let customer = json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"});
    let (status, _) = server.send("POST", "/customers", Some(customer.clone())).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, _) =
        server.send_with("POST", "/customers", Some(customer), &[("authorization", &bearer)]).await;
    assert_eq!(status, 201);
    let bearer = format!("Bearer {admin}");
    let (_, events) = server
        .send_with("GET", "/admin/streams/customer/ada", None, &[("authorization", &bearer)])
        .await;
    assert_eq!(events[0]["metadata"]["user"], "alice");
    let (status, _) = server.send("GET", "/health", None).await;
    assert_eq!(status, 200);
    server.kill_9();
}

#[test]
fn listening_beyond_loopback_without_tokens_is_refused() {
    let (code, _, err) = strata(&["serve", "--bind", "0.0.0.0:0", "--store", "memory"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--auth-file") && err.contains("--insecure-no-auth"), "{err}");
    let (code, _, err) =
        strata(&["serve", "--store", "memory", "--auth-file", "/nonexistent/auth.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn bench_compare_prints_a_run_beside_its_baseline_and_refuses_a_baseline_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = ["bench", "--store", "memory", "--orders", "50", "--concurrency", "4"];
    let (code, baseline, stderr) = strata(&[&run[..], &["--json"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let file = dir.path().join("baseline.json");
    std::fs::write(&file, &baseline).unwrap();
    let file = file.to_str().unwrap();

    let (code, table, stderr) = strata(&[&run[..], &["--compare", file]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(table.contains(&format!("compared with {file}")), "{table}");
    let commands = table.lines().find(|line| line.starts_with("| commands/s |")).unwrap();
    assert!(commands.ends_with('|') && commands.contains('×'), "a ratio: {commands}");

    let (code, json, stderr) = strata(&[&run[..], &["--compare", file, "--json"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(json.trim()).unwrap();
    let baseline: Value = serde_json::from_str(baseline.trim()).unwrap();
    let compared = &json["compare"]["figures"]["commands_per_s"];
    assert_eq!(compared["baseline"], baseline["commands_per_s"]);
    assert_eq!(compared["this"], json["commands_per_s"]);

    let not_bench = dir.path().join("other.json");
    std::fs::write(&not_bench, r#"{"hello": 1}"#).unwrap();
    for (bad, says) in [
        ("/nonexistent/baseline.json", "cannot read"),
        (not_bench.to_str().unwrap(), "not the output of strata bench"),
    ] {
        let (code, stdout, stderr) = strata(&[&run[..], &["--compare", bad]].concat());
        assert_eq!(code, 2, "{bad}: {stdout} {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
        assert!(stdout.is_empty(), "nothing was run: {stdout}");
    }
}

#[test]
fn bench_keep_runs_again_on_the_store_it_left_with_orders_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let run = ["bench", "--orders", "30", "--concurrency", "4", "--json"];
    let kept = [&run[..], &["--data-dir", store, "--keep"]].concat();
    let mut held = 0;
    for round in 0..2 {
        let (code, stdout, stderr) = strata(&kept);
        assert_eq!(code, 0, "round {round}: {stderr}");
        let figures: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(figures["correct"], true, "{figures}");
        assert_eq!(figures["events_before"], held, "round {round}: {figures}");
        assert_eq!(figures["events"], 300, "new orders, none refused: {figures}");
        assert!(figures["rebuild_events_per_s"].is_null(), "rebuilds are skipped: {figures}");
        held += 300;
    }
    let (code, stdout, stderr) =
        strata(&["events", "export", "--data-dir", &format!("{store}/events")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 600, "both runs' events are kept");

    // Without --keep a used directory is refused, and --keep refuses one it did not make.
    let (code, stdout, stderr) = strata(&[&run[..], &["--data-dir", store]].concat());
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains("not empty") && stderr.contains("--keep"), "{stderr}");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let other = other.to_str().unwrap();
    for (args, says) in [
        (vec!["--data-dir", other, "--keep"], "not made by strata bench --keep"),
        (vec!["--keep"], "--data-dir"),
        (vec!["--store", "memory", "--keep"], "SQLite"),
    ] {
        let (code, stdout, stderr) = strata(&[&run[..], &args[..]].concat());
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("other/notes.txt")).unwrap(), "mine");
}

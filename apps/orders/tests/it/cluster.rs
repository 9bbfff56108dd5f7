//! Three `strata serve` nodes on one PostgreSQL schema: every node takes commands, each
//! projection runs on one node, and when the node running them is killed with SIGKILL under
//! load another takes over within 10 s and every view ends equal to a rebuild from zero.
//! Commands racing on one order through all three nodes all succeed, and one idempotency
//! key sent to two nodes at once acts once. A thousand orders confirmed through all three
//! nodes never oversell, though the node running the fulfilment saga is killed midway.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata::EventStore;
use strata_postgres::{PgEventStore, PgViewManager};
use strata_testkit::services;

use crate::process::Server;
use crate::rebuild::views_equal_a_replay;
use crate::sagas::oversell;

const NODES: usize = 3;
const ORDERS_PER_NODE: usize = 30;

async fn projections(node: &Server) -> Vec<Value> {
    let (status, list) = node.send("GET", "/admin/projections", None).await;
    assert_eq!(status, 200);
    list.as_array().cloned().unwrap_or_default()
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_projection_owner_is_replaced_and_views_equal_a_rebuild() {
    let Some(database) = services::postgres().await else { return };
    let url = database.url();
    let nodes: Vec<Arc<Server>> = (0..NODES)
        .map(|n| Arc::new(Server::spawn(&["--node-id", &format!("node{n}"), "--store", &url])))
        .collect();

    let setup = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        ("/products/tea/restock", json!({"qty": 100})),
    ];
    for (n, (path, body)) in setup.into_iter().enumerate() {
        // Commands work on every node.
        let (status, answer) = nodes[n % NODES].send("POST", path, Some(body)).await;
        assert!(status < 300, "{path}: {status} {answer}");
    }

    // Every projection gets exactly one owner among the nodes.
    within(Duration::from_secs(10), "every projection has an owner", || async {
        projections(&nodes[0]).await.iter().all(|p| p["owner"].is_string())
    })
    .await;
    let owners = projections(&nodes[0]).await;
    let victim_id = owners.iter().find(|p| p["name"] == "orders").unwrap()["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = victim_id.trim_start_matches("node").parse::<usize>().unwrap();
    let victim_pid = nodes[victim].child.id().to_string();

    // Load on all three nodes; the owner of the projections dies in the middle of it.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let (node, acked) = (node.clone(), acked_tx.clone());
        clients.push(tokio::spawn(async move {
            for k in 0..ORDERS_PER_NODE {
                let id = format!("n{n}o{k}");
                let place = json!({"order_id": id, "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
                if node.send("POST", "/orders", Some(place)).await.0 != 201 {
                    return;
                }
                let line = Some(json!({"sku": "tea", "qty": 2}));
                if node.send("POST", &format!("/orders/{id}/lines"), line).await.0 != 200 {
                    return;
                }
                let _ = acked.send(id);
            }
        }));
    }
    drop(acked_tx);
    let mut acked = BTreeSet::new();
    while acked.len() < ORDERS_PER_NODE {
        acked.insert(acked_rx.recv().await.expect("orders are acknowledged"));
    }
    std::process::Command::new("kill").args(["-KILL", &victim_pid]).status().unwrap();
    let killed_at = Instant::now();
    for client in clients {
        client.await.unwrap();
    }
    while let Some(id) = acked_rx.recv().await {
        acked.insert(id);
    }
    let survivor = &nodes[(victim + 1) % NODES];

    // Another node takes every projection over, within 10 s of the kill, and catches up.
    within(Duration::from_secs(15), "the projections move to a live node", || async {
        projections(survivor)
            .await
            .iter()
            .all(|p| p["owner"].as_str().is_some_and(|owner| owner != victim_id))
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(takeover < Duration::from_secs(10), "takeover took {takeover:?}");
    eprintln!(
        "cluster: {victim_id} killed; projections taken over after {takeover:?}; {} orders acknowledged; owners now {:?}",
        acked.len(),
        projections(survivor).await.iter().map(|p| p["owner"].clone()).collect::<Vec<_>>()
    );
    let head = projections(survivor).await[0]["head"].as_u64().unwrap();
    for path in ["/customers/ada", "/customers/ada/orders", "/products/tea"] {
        let (status, _) =
            survivor.send("GET", &format!("{path}?min_position={head}&wait_ms=10000"), None).await;
        assert_eq!(status, 200, "{path} caught up on a surviving node");
    }
    for id in &acked {
        let (status, order) = survivor
            .send("GET", &format!("/orders/{id}?min_position={head}&wait_ms=10000"), None)
            .await;
        assert_eq!(status, 200, "acknowledged order {id} is in the view");
        assert_eq!(order["lines"].as_array().map(Vec::len), Some(2), "order {id} has both lines");
    }

    // Every view equals a rebuild from zero into a fresh schema.
    let events = Arc::new(PgEventStore::connect(&url, None).await.unwrap());
    assert!(events.head().0 >= head);
    let live = PgViewManager::connect(&url, None).await.unwrap();
    let Some(fresh) = services::postgres().await else { return };
    let replayed = Arc::new(PgViewManager::connect(&fresh.url(), None).await.unwrap());
    let acked: Vec<String> = acked.into_iter().collect();
    views_equal_a_replay(events, &live, replayed, &["ada"], &["tea"], &acked).await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_nodes_lose_no_command_and_one_key_acts_once() {
    const LINES: usize = 60;
    let Some(database) = services::postgres().await else { return };
    let url = database.url();
    let nodes: Vec<Arc<Server>> = (0..NODES)
        .map(|n| Arc::new(Server::spawn(&["--node-id", &format!("race{n}"), "--store", &url])))
        .collect();
    let setup = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        ("/orders", json!({"order_id": "o1", "customer_id": "ada", "lines": []})),
    ];
    for (path, body) in setup {
        let (status, answer) = nodes[0].send("POST", path, Some(body)).await;
        assert!(status < 300, "{path}: {status} {answer}");
    }

    // Sixty lines on one order at once, without If-Match, spread over the three nodes: each
    // node's version race with the others is decided again, so every one succeeds.
    let start = Arc::new(tokio::sync::Barrier::new(LINES));
    let mut clients = Vec::new();
    for n in 0..LINES {
        let (node, start) = (nodes[n % NODES].clone(), start.clone());
        clients.push(tokio::spawn(async move {
            start.wait().await;
            node.send("POST", "/orders/o1/lines", Some(json!({"sku": "tea", "qty": 1}))).await
        }));
    }
    for client in clients {
        let (status, answer) = client.await.unwrap();
        assert_eq!(status, 200, "a line racing on three nodes: {answer}");
    }
    let (_, events) = nodes[1].send("GET", "/admin/streams/order/o1", None).await;
    assert_eq!(events.as_array().map(Vec::len), Some(LINES + 1), "every line is stored once");

    // One key sent to two nodes at the same moment: one acts; the other answers the same
    // (or 409 while the first is still being answered), and a retry gets the first answer.
    for round in 0..10 {
        let key = format!("ship-{round}");
        let head = |node: Arc<Server>| async move {
            let (_, list) = node.send("GET", "/admin/projections", None).await;
            list[0]["head"].as_u64().unwrap()
        };
        let before = head(nodes[0].clone()).await;
        let send = |node: Arc<Server>, key: String| {
            tokio::spawn(async move {
                let headers = [("idempotency-key", key.as_str())];
                let body = Some(json!({"qty": 5}));
                node.send_with("POST", "/products/tea/restock", body, &headers).await
            })
        };
        let a = send(nodes[0].clone(), key.clone());
        let b = send(nodes[2].clone(), key.clone());
        let answers = [a.await.unwrap(), b.await.unwrap()];
        let ok: Vec<_> = answers.iter().filter(|(status, _)| *status == 200).collect();
        assert!(!ok.is_empty(), "round {round}: one node acts, got {answers:?}");
        assert!(
            answers.iter().all(|(status, _)| *status == 200 || *status == 409),
            "round {round}: {answers:?}"
        );
        if let [first, second] = ok[..] {
            assert_eq!(first.1, second.1, "round {round}: both nodes give the first answer");
        }
        let retry = send(nodes[1].clone(), key).await.unwrap();
        assert_eq!((retry.0, &retry.1), (200, &ok[0].1), "round {round}: a retry gets that answer");
        let after = head(nodes[1].clone()).await;
        // The listing's head is each node's own; wait until node 1 has heard of the append.
        let mut after = after;
        let deadline = Instant::now() + Duration::from_secs(10);
        while after < before + 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            after = head(nodes[1].clone()).await;
        }
        assert_eq!(after, before + 1, "round {round}: the key acted exactly once");
    }
}

/// Three nodes and the one that was killed; requests go round the live ones, each with an
/// idempotency key, so that one cut off by the kill can be sent again to another node.
struct Cluster {
    nodes: Vec<Arc<Server>>,
    dead: std::sync::atomic::AtomicUsize,
    next: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    fn live(&self) -> Arc<Server> {
        use std::sync::atomic::Ordering;
        let dead = self.dead.load(Ordering::SeqCst);
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
            if n != dead {
                return self.nodes[n].clone();
            }
        }
    }

    fn sender(
        self: &Arc<Self>,
    ) -> impl Fn(String, Option<Value>) -> oversell::Answer + Clone + use<> {
        let cluster = self.clone();
        move |path, body| {
            let cluster = cluster.clone();
            Box::pin(async move {
                let key = match &body {
                    Some(body) => {
                        use std::hash::{Hash, Hasher};
                        let mut hasher = std::collections::hash_map::DefaultHasher::new();
                        (&path, body.to_string()).hash(&mut hasher);
                        format!("{:x}", hasher.finish())
                    }
                    None => String::new(),
                };
                let method = if body.is_some() { "POST" } else { "GET" };
                for _ in 0..50 {
                    let node = cluster.live();
                    let headers: &[(&str, &str)] =
                        if key.is_empty() { &[] } else { &[("idempotency-key", key.as_str())] };
                    let (status, answer) =
                        node.send_with(method, &path, body.clone(), headers).await;
                    // Cut off by the kill, or a node between leases: the same key, elsewhere.
                    if status != 0 && status != 503 {
                        return (status, answer);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("no node answered {path}");
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_orders_on_three_nodes_never_oversell_when_the_sagas_owner_is_killed() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let Some(database) = services::postgres().await else { return };
    let url = database.url();
    let nodes: Vec<Arc<Server>> = (0..NODES)
        .map(|n| Arc::new(Server::spawn(&["--node-id", &format!("saga{n}"), "--store", &url])))
        .collect();
    let cluster =
        Arc::new(Cluster { nodes, dead: AtomicUsize::new(usize::MAX), next: AtomicUsize::new(0) });
    let send = cluster.sender();
    oversell::setup(&send).await;
    let owner = |cluster: Arc<Cluster>| async move {
        let list = projections(&cluster.live()).await;
        let saga = list.iter().find(|p| p["name"] == "fulfilment").cloned().unwrap_or_default();
        (saga["owner"].as_str().map(str::to_owned), saga["position"].as_u64().unwrap_or(0))
    };
    within(Duration::from_secs(10), "the saga has an owner", || async {
        owner(cluster.clone()).await.0.is_some()
    })
    .await;

    // Kill the saga's owner once it has decided on a few hundred events.
    let killer = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                let (victim, position) = owner(cluster.clone()).await;
                if let Some(victim) = victim.filter(|_| position >= 1500) {
                    let n: usize = victim.trim_start_matches("saga").parse().unwrap();
                    cluster.dead.store(n, Ordering::SeqCst);
                    let pid = cluster.nodes[n].child.id().to_string();
                    std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                    return victim;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let placed = oversell::run(1000, 48, send.clone()).await;
    let victim = tokio::time::timeout(Duration::from_secs(30), killer)
        .await
        .expect("the saga's owner was killed midway")
        .unwrap();

    // Another node runs the saga on, and everything settles.
    within(
        Duration::from_secs(30),
        "the saga moves on and every projection catches up",
        || async {
            let list = projections(&cluster.live()).await;
            list.iter().all(|p| {
                p["owner"].as_str().is_some_and(|o| o != victim) && p["position"] == p["head"]
            })
        },
    )
    .await;
    let summary = oversell::check(&placed, &send).await;
    eprintln!("oversell, three PostgreSQL nodes, {victim} killed: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_fires_once_on_the_node_that_takes_the_saga_over() {
    let Some(database) = services::postgres().await else { return };
    let url = database.url();
    let nodes: Vec<Arc<Server>> = (0..2)
        .map(|n| {
            let id = format!("ttl{n}");
            Arc::new(Server::spawn(&["--node-id", &id, "--store", &url, "--order-ttl", "5s"]))
        })
        .collect();
    let setup = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        (
            "/orders",
            json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]}),
        ),
    ];
    for (path, body) in setup {
        let (status, answer) = nodes[0].send("POST", path, Some(body)).await;
        assert!(status < 300, "{path}: {status} {answer}");
    }
    // The saga's owner schedules the expiry, then dies before it is due.
    let owner = |node: Arc<Server>| async move {
        let (_, saga) = node.send("GET", "/admin/sagas/fulfilment/o1", None).await;
        let list = projections(&node).await;
        let saga_owner =
            list.iter().find(|p| p["name"] == "fulfilment").map(|p| p["owner"].clone());
        saga_owner
            .and_then(|o| o.as_str().map(str::to_owned))
            .filter(|_| saga["deadline"].is_string())
    };
    within(Duration::from_secs(10), "the saga schedules the expiry", || async {
        owner(nodes[1].clone()).await.is_some()
    })
    .await;
    let owner = owner(nodes[1].clone()).await.expect("the expiry is still pending");
    let victim = owner.trim_start_matches("ttl").parse::<usize>().unwrap();
    let pid = nodes[victim].child.id().to_string();
    std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    let survivor = &nodes[1 - victim];
    let (_, order) = survivor.send("GET", "/orders/o1", None).await;
    assert_eq!(order["status"], "placed", "the owner died before the expiry was due");

    within(Duration::from_secs(20), "the survivor expires the order", || async {
        let (_, order) = survivor.send("GET", "/orders/o1", None).await;
        order["cancel_reason"] == "expired"
    })
    .await;
    within(Duration::from_secs(10), "the saga has nothing left to fire", || async {
        let (_, saga) = survivor.send("GET", "/admin/sagas/fulfilment/o1", None).await;
        saga["status"] == "failed" && saga["deadline"].is_null()
    })
    .await;
    let (_, events) = survivor.send("GET", "/admin/streams/order/o1", None).await;
    let types: Vec<&str> =
        events.as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderCancelled"]);
    // Sent once: a second send would count again, though the order could not expire twice.
    let text = survivor.text("/metrics").await;
    let sent = text
        .lines()
        .find(|l| l.starts_with("strata_commands_total{aggregate=\"order\",command=\"Expire\""))
        .unwrap_or_else(|| panic!("no Expire counted:\n{text}"));
    assert!(sent.ends_with(" 1"), "{sent}");
}

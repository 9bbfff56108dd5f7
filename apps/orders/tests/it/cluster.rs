//! Three `strata serve` nodes on one PostgreSQL schema: every node takes commands, each
//! projection runs on one node, and when the node running them is killed with SIGKILL under
//! load another takes over within 10 s and every view ends equal to a rebuild from zero.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata::EventStore;
use strata_postgres::{PgEventStore, PgViewManager};
use strata_testkit::services;

use crate::process::Server;
use crate::rebuild::views_equal_a_replay;

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

//! `strata serve --redis`: the products and customers views live in Redis as JSON strings
//! other services can read, the rest stay in the main store, and a node killed with SIGKILL
//! resumes from the checkpoint in Redis without applying anything twice.

use serde_json::{Value, json};
use strata_testkit::services;

use crate::process::{Server, strata};

fn redis_json(url: &str, key: &str) -> Option<Value> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_connection().unwrap();
    let text: Option<String> = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
    text.map(|text| serde_json::from_str(&text).unwrap())
}

async fn command(server: &Server, path: &str, body: Value) -> u64 {
    let (status, answer) = server.send("POST", path, Some(body)).await;
    assert!(status < 300, "{path}: {status} {answer}");
    answer["position"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_documents_live_in_redis_and_a_killed_node_applies_nothing_twice() {
    let Some(redis) = services::redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let args = ["--data-dir", &dir_arg, "--redis", redis.url(), "--redis-prefix", redis.prefix()];
    let server = Server::spawn(&args);
    command(
        &server,
        "/customers",
        json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"}),
    )
    .await;
    command(&server, "/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})).await;
    let head = command(&server, "/products/tea/restock", json!({"qty": 10})).await;
    let (status, product) =
        server.send("GET", &format!("/products/tea?min_position={head}"), None).await;
    assert_eq!((status, product["on_hand"].as_i64()), (200, Some(10)), "{product}");

    let prefix = redis.prefix();
    let stored = redis_json(redis.url(), &format!("{prefix}products:tea")).expect("in Redis");
    assert_eq!(stored["on_hand"], 10);
    assert_eq!(stored["name"], "Tea");
    assert!(redis_json(redis.url(), &format!("{prefix}customers:ada")).is_some());
    let order = command(
        &server,
        "/orders",
        json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]}),
    )
    .await;
    let (status, _) = server.send("GET", &format!("/orders/o1?min_position={order}"), None).await;
    assert_eq!(status, 200, "the orders view is served from the main store");
    assert!(
        redis_json(redis.url(), &format!("{prefix}orders:o1")).is_none(),
        "only the products and customers views go to Redis"
    );

    server.kill_9();
    let server = Server::spawn(&args);
    let head = command(&server, "/products/tea/restock", json!({"qty": 5})).await;
    let (status, product) =
        server.send("GET", &format!("/products/tea?min_position={head}"), None).await;
    assert_eq!((status, product["on_hand"].as_i64()), (200, Some(15)), "{product}");
    let (status, list) = server.send("GET", "/admin/projections", None).await;
    assert_eq!(status, 200);
    let products = list.as_array().unwrap().iter().find(|p| p["name"] == "products").unwrap();
    assert!(products["position"].as_u64() >= Some(head), "{products}");

    // The offline tools find the views where the service keeps them.
    server.kill_9();
    let (code, out, err) = strata(&[&["projections", "rebuild", "products"], &args[..]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let stored = redis_json(redis.url(), &format!("{prefix}products:tea")).expect("in Redis");
    assert_eq!(stored["on_hand"], 15, "the rebuild swapped in the same view");
    let (code, out, err) = strata(&[&["projections", "list"], &args[..]].concat());
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|line| line.starts_with("| products ")).unwrap();
    assert!(row.contains(&head.to_string()), "{out}");
}

#[test]
fn a_bad_prefix_or_an_unreachable_server_stops_serve_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().display().to_string();
    let (code, _, err) = strata(&["serve", "--data-dir", &dir, "--redis-prefix", "has space"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a usable key prefix"), "{err}");
    let started = std::time::Instant::now();
    let (code, _, err) = strata(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--redis",
        "redis://127.0.0.1:1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open the Redis view store"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "gave up in a bounded time");
}

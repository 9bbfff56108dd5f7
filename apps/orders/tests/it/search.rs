//! `GET /search/orders` against a direct computation: orders with customers, products and
//! addresses drawn from small vocabularies, each word searched for, and the answer held
//! against the orders whose words hold it; across `kill -9` of the server while its index
//! is behind the log, so that crashes land between and inside index commits.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::process::Server;

const CUSTOMERS: [(&str, &str); 5] = [
    ("ada", "Ada Lovelace"),
    ("grace", "Grace Hopper"),
    ("alan", "Alan Turing"),
    ("edsger", "Edsger Dijkstra"),
    ("barbara", "Barbara Liskov"),
];
// One sku is also a customer's id: an order's text must name each with its own name.
const PRODUCTS: [(&str, &str); 7] = [
    ("tea", "Green Tea"),
    ("coffee", "Black Coffee"),
    ("cake", "Carrot Cake"),
    ("scone", "Cheese Scone"),
    ("jam", "Strawberry Jam"),
    ("bread", "Rye Bread"),
    ("edsger", "Edsger Shortbread"),
];
const ADDRESSES: [&str; 4] =
    ["12 Harbour Street Leith", "3 Mill Lane Oxford", "40 Castle Road Cardiff", "7 Quay Walk"];

/// The lowercase words an order is found by, as the index splits them.
fn words(customer: usize, skus: &[usize], address: usize) -> BTreeSet<String> {
    let mut text = format!("{} {}", CUSTOMERS[customer].0, CUSTOMERS[customer].1);
    for &sku in skus {
        text.push_str(&format!(" {} {}", PRODUCTS[sku].0, PRODUCTS[sku].1));
    }
    text.push(' ');
    text.push_str(ADDRESSES[address]);
    text.split_whitespace().map(str::to_lowercase).collect()
}

async fn post(server: &Server, path: &str, body: Value) -> u64 {
    let (status, answer) = server.send("POST", path, Some(body)).await;
    assert!(status < 300, "{path}: {status} {answer}");
    answer["position"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_answers_match_a_direct_computation_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let mut server = Server::spawn(&["--data-dir", &dir_arg]);
    for (id, name) in CUSTOMERS {
        let email = format!("{id}@example.com");
        post(&server, "/customers", json!({"customer_id": id, "name": name, "email": email})).await;
    }
    for (sku, name) in PRODUCTS {
        post(&server, "/products", json!({"sku": sku, "name": name, "price_cents": 100})).await;
    }

    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut head = 0;
    for n in 0..240 {
        let (customer, address) = (next(CUSTOMERS.len()), next(ADDRESSES.len()));
        let skus: Vec<usize> = (0..1 + next(3)).map(|_| next(PRODUCTS.len())).collect();
        let id = format!("o{n}");
        let lines: Vec<Value> =
            skus.iter().map(|&sku| json!({"sku": PRODUCTS[sku].0, "qty": 1})).collect();
        let body = json!({"order_id": id, "customer_id": CUSTOMERS[customer].0, "lines": lines,
                          "shipping_address": ADDRESSES[address]});
        head = post(&server, "/orders", body).await;
        expected.insert(id, words(customer, &skus, address));
        // Killed while its index is most likely behind the log, three times.
        if n % 80 == 79 {
            server.kill_9();
            server = Server::spawn(&["--data-dir", &dir_arg]);
        }
    }

    let vocabulary: BTreeSet<String> = expected.values().flatten().cloned().collect();
    for word in &vocabulary {
        let path = format!("/search/orders?q={word}&limit=500&min_position={head}&wait_ms=10000");
        let (status, found) = server.send("GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {found}");
        let want: BTreeSet<&str> = expected
            .iter()
            .filter(|(_, words)| words.contains(word))
            .map(|(id, _)| id.as_str())
            .collect();
        let hits = found["hits"].as_array().unwrap();
        let got: BTreeSet<&str> = hits.iter().map(|hit| hit["id"].as_str().unwrap()).collect();
        assert_eq!(found["total"].as_u64(), Some(want.len() as u64), "{word}: total");
        assert_eq!(got, want, "{word}: the orders found");
        assert_eq!(hits.len(), got.len(), "{word}: no order found twice");
        let scores: Vec<f64> = hits.iter().map(|hit| hit["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|pair| pair[0] >= pair[1]), "{word}: best first");
    }

    // A hit carries the order's own figures; both words of a phrase rank it first.
    let (_, found) =
        server.send("GET", "/search/orders?q=%22carrot%20cake%22%20leith&limit=1", None).await;
    let first = &found["hits"][0];
    let (_, order) =
        server.send("GET", &format!("/orders/{}", first["id"].as_str().unwrap()), None).await;
    assert_eq!(first["customer_id"], order["customer_id"]);
    assert_eq!(first["status"], order["status"]);
    assert_eq!(first["total_cents"], order["total_cents"]);
    let words = &expected[first["id"].as_str().unwrap()];
    assert!(words.contains("carrot") && words.contains("leith"), "{found}");

    // Listed with the projections; bad searches are refused.
    let (_, list) = server.send("GET", "/admin/projections", None).await;
    let search = list.as_array().unwrap().iter().find(|p| p["name"] == "order_search").unwrap();
    assert_eq!(search["status"], "running", "{search}");
    for bad in [
        "/search/orders",
        "/search/orders?q=%20",
        "/search/orders?q=tea&limit=0",
        "/search/orders?q=nofield:tea",
        "/search/orders?q=%22unclosed",
    ] {
        let (status, problem) = server.send("GET", bad, None).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let deep = format!("/search/orders?q={}tea{}", "(".repeat(400), ")".repeat(400));
    let (status, problem) = server.send("GET", &deep, None).await;
    assert_eq!(status, 400, "{problem}");
    let (status, _) = server.send("GET", "/health", None).await;
    assert_eq!(status, 200, "the server lives on");
}

//! Every error status of the API, each checked to change nothing.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::Service;

async fn post_raw(service: &Service, path: &str, body: &str) -> crate::support::Answer {
    service.request(Method::POST, path, Some(body), &[]).await
}

#[tokio::test]
async fn malformed_bodies_are_400_and_name_the_field() {
    let service = Service::start().await;
    service.seed().await;
    let head = service.head();
    post_raw(&service, "/customers", "{not json").await.expect_problem(400, "not valid JSON");
    post_raw(&service, "/customers", r#"{"name":"Ada"}"#)
        .await
        .expect_problem(400, "missing field `email`");
    post_raw(&service, "/products", r#"{"sku":"x","name":"X","price_cents":"free"}"#)
        .await
        .expect_problem(400, "price_cents");
    post_raw(&service, "/orders", r#"{"customer_id":"ada","lines":[{"sku":"tea","qty":1.5}]}"#)
        .await
        .expect_problem(400, "lines[0].qty");
    post_raw(&service, "/orders/o1/cancel", "{}")
        .await
        .expect_problem(400, "missing field `reason`");
    post_raw(&service, "/customers", r#"{"name":"A","email":"a@b","nickname":"x"}"#)
        .await
        .expect_problem(400, "unknown field `nickname`");
    post_raw(&service, "/orders/o1/confirm", "[]").await.expect_problem(400, "");
    assert_eq!(service.head(), head, "nothing was appended");
}

#[tokio::test]
async fn invalid_ids_are_400() {
    let service = Service::start().await;
    service.seed().await;
    let head = service.head();
    service
        .post("/customers", json!({"customer_id": "has space", "name": "A", "email": "a@b"}))
        .await
        .expect_problem(400, "customer_id");
    service
        .post("/customers", json!({"customer_id": "", "name": "A", "email": "a@b"}))
        .await
        .expect_problem(400, "customer_id");
    service
        .post("/customers", json!({"customer_id": "x".repeat(65), "name": "A", "email": "a@b"}))
        .await
        .expect_problem(400, "customer_id");
    service
        .post("/products", json!({"sku": "tea/green", "name": "T", "price_cents": 1}))
        .await
        .expect_problem(400, "sku");
    service
        .post("/orders", json!({"order_id": "ö", "customer_id": "ada", "lines": []}))
        .await
        .expect_problem(400, "order_id");
    service
        .post("/orders", json!({"customer_id": "ada", "lines": [{"sku": "t ea", "qty": 1}]}))
        .await
        .expect_problem(400, "lines[0].sku");
    service.post("/orders/bad%20id/confirm", json!({})).await.expect_problem(400, "path");
    service.get("/orders/bad%20id").await.expect_problem(400, "path");
    assert_eq!(service.head(), head);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415_and_large_ones_413() {
    let service = Service::start().await;
    let not_json =
        service.request(Method::POST, "/customers", None, &[("content-type", "text/plain")]).await;
    not_json.expect_problem(415, "JSON");
    let huge = format!(r#"{{"name":"{}","email":"a@b"}}"#, "x".repeat(70 * 1024));
    post_raw(&service, "/customers", &huge).await.expect_problem(413, "larger than 65536");
    let keyed = service
        .request(Method::POST, "/customers", Some(&huge), &[("idempotency-key", "big")])
        .await;
    keyed.expect_problem(413, "larger than 65536");
    let latin = [("content-type", "application/json; charset=ISO-8859-1")];
    service.request(Method::POST, "/customers", None, &latin).await.expect_problem(415, "UTF-8");
    let utf8 = [("content-type", "application/json; charset=\"utf-8\"")];
    let accepted = service.request(Method::POST, "/customers", None, &utf8).await;
    accepted.expect_problem(400, "expected a JSON object");
    let spaced = [("idempotency-key", "two words")];
    let body = r#"{"name":"Ada","email":"a@b"}"#;
    let refused = service.request(Method::POST, "/customers", Some(body), &spaced).await;
    refused.expect_problem(400, "visible ASCII");
    assert_eq!(service.head(), 0);
}

#[tokio::test]
async fn missing_aggregates_and_views_are_404() {
    let service = Service::start().await;
    service.seed().await;
    let head = service.head();
    service
        .post("/orders/nope/confirm", json!({}))
        .await
        .expect_problem(404, "order does not exist");
    service.post("/orders/nope/ship", json!({})).await.expect_problem(404, "order does not exist");
    service
        .post("/orders/nope/cancel", json!({"reason": "x"}))
        .await
        .expect_problem(404, "order does not exist");
    service
        .post("/orders/nope/lines", json!({"sku": "tea", "qty": 1}))
        .await
        .expect_problem(404, "order does not exist");
    service
        .post("/products/nope/restock", json!({"qty": 1}))
        .await
        .expect_problem(404, "product does not exist");
    service.view("/orders/nope").await.expect_problem(404, "nope");
    service.view("/customers/nope").await.expect_problem(404, "nope");
    service.view("/customers/nope/orders").await.expect_problem(404, "nope");
    service.view("/products/nope").await.expect_problem(404, "nope");
    service.get("/admin/streams/order/nope").await.expect_problem(404, "no events");
    service.get("/admin/streams/planet/ada").await.expect_problem(404, "aggregate type");
    service.get("/no/such/route").await.expect_problem(404, "route");
    let conditional = service
        .request(
            axum::http::Method::POST,
            "/orders/nope/confirm",
            Some("{}"),
            &[("if-match", "\"1\"")],
        )
        .await;
    conditional.expect_problem(404, "order does not exist");
    assert_eq!(service.head(), head);
}

#[tokio::test]
async fn conflicts_with_current_state_are_409() {
    let service = Service::start().await;
    service.seed().await;
    service
        .post("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "a@b"}))
        .await
        .expect_problem(409, "already exists");
    service
        .post("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 1}))
        .await
        .expect_problem(409, "already exists");
    service
        .post("/orders", json!({"order_id": "o1", "customer_id": "ada", "lines": []}))
        .await
        .expect_problem(409, "already exists");
    let head = service.head();
    service
        .post("/orders/o1/ship", json!({}))
        .await
        .expect_problem(409, "cannot ship an order that is placed");
    service.post("/orders/o1/confirm", json!({})).await;
    service
        .post("/orders/o1/lines", json!({"sku": "tea", "qty": 1}))
        .await
        .expect_problem(409, "cannot add a line to an order that is confirmed");
    service.post("/orders/o1/confirm", json!({})).await.expect_problem(409, "confirmed");
    service.post("/orders/o1/ship", json!({})).await;
    service
        .post("/orders/o1/cancel", json!({"reason": "late"}))
        .await
        .expect_problem(409, "cannot cancel an order that is shipped");
    // The fulfilment saga appends to the products meanwhile; the order holds only what
    // succeeded: placed, confirming, confirmed (by the saga) and shipped.
    let stream = service.get("/admin/streams/order/o1").await;
    let types: Vec<&str> =
        stream.body.as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["OrderPlaced", "OrderConfirmationRequested", "OrderConfirmed", "OrderShipped"]
    );
    assert!(service.head() > head, "{head}");
}

#[tokio::test]
async fn broken_rules_are_422() {
    let service = Service::start().await;
    service.seed().await;
    let head = service.head();
    service.post("/products/tea/restock", json!({"qty": 0})).await.expect_problem(422, "qty");
    service.post("/products/tea/restock", json!({"qty": -2})).await.expect_problem(422, "qty");
    service
        .post("/products", json!({"sku": "gift", "name": "Gift", "price_cents": -1}))
        .await
        .expect_problem(422, "price_cents");
    service
        .post("/products", json!({"sku": "gift", "name": " ", "price_cents": 1}))
        .await
        .expect_problem(422, "name");
    service
        .post("/customers", json!({"name": "", "email": "a@b"}))
        .await
        .expect_problem(422, "name");
    service
        .post("/customers", json!({"name": "Bob", "email": "bob.example.com"}))
        .await
        .expect_problem(422, "email");
    service
        .post("/orders", json!({"customer_id": "ada", "lines": [{"sku": "tea", "qty": 0}]}))
        .await
        .expect_problem(422, "qty");
    service
        .post("/orders", json!({"customer_id": "ada", "lines": [{"sku": "nope", "qty": 1}]}))
        .await
        .expect_problem(422, "\"nope\"");
    service
        .post("/orders", json!({"customer_id": "nobody", "lines": []}))
        .await
        .expect_problem(422, "customer \"nobody\"");
    service
        .post("/orders/o1/lines", json!({"sku": "nope", "qty": 1}))
        .await
        .expect_problem(422, "product \"nope\"");
    service
        .post("/orders/o1/lines", json!({"sku": "tea", "qty": 0}))
        .await
        .expect_problem(422, "qty");
    service.post("/orders/o1/cancel", json!({"reason": ""})).await.expect_problem(422, "reason");
    // Bounds that keep every total far from overflowing.
    service
        .post("/products/tea/restock", json!({"qty": 1_000_001}))
        .await
        .expect_problem(422, "at most");
    service
        .post("/orders/o1/lines", json!({"sku": "tea", "qty": i64::MAX}))
        .await
        .expect_problem(422, "at most");
    service
        .post("/products", json!({"sku": "gold", "name": "Gold", "price_cents": 1_000_000_001}))
        .await
        .expect_problem(422, "price_cents");
    assert_eq!(service.head(), head, "no refused command appended anything");
    let order = service.view("/orders/o1").await;
    assert_eq!(order.body["lines"].as_array().map(Vec::len), Some(1), "the order is unchanged");
}

#[tokio::test]
async fn a_view_that_does_not_reach_min_position_in_time_is_503_with_retry_after() {
    let service = Service::start().await;
    service.seed().await;
    // The customers projection stops here, so the view stays behind a position that exists.
    service.app.projection("customers").expect("customers runs").stop();
    let bob = service
        .post(
            "/customers",
            json!({"customer_id": "bob", "name": "Bob", "email": "bob@example.com"}),
        )
        .await;
    let answer =
        service.get(&format!("/customers/bob?min_position={}&wait_ms=50", bob.position())).await;
    answer.expect_problem(503, "not yet at");
    assert_eq!(answer.header("retry-after"), Some("1"));
    service.get("/orders/o1?wait_ms=30001").await.expect_problem(400, "wait_ms");
    service.get("/orders/o1?min_position=-1").await.expect_problem(400, "min_position");
}

#[tokio::test]
async fn a_min_position_beyond_the_log_is_400_after_the_wait() {
    let service = Service::start().await;
    service.seed().await;
    let beyond = service.head() + 1;
    let answer = service.get(&format!("/orders/o1?min_position={beyond}&wait_ms=50")).await;
    answer.expect_problem(400, "beyond the last event");
    let answer = service.get(&format!("/orders/o1?min_position={}", service.head())).await;
    assert_eq!(answer.status, 200, "the last event's position is in the log: {}", answer.body);
}

#[tokio::test]
async fn bad_headers_are_400() {
    let service = Service::start().await;
    service.seed().await;
    let long = "c".repeat(129);
    let answer =
        service.request(Method::GET, "/health", None, &[("x-correlation-id", &long)]).await;
    answer.expect_problem(400, "X-Correlation-Id");
    let answer = service
        .request(Method::POST, "/orders/o1/confirm", Some("{}"), &[("if-match", "yesterday")])
        .await;
    answer.expect_problem(400, "If-Match");
    service.get("/admin/streams/order/%FF").await.expect_problem(400, "");
    assert_eq!(service.head(), 6);
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let service = Service::start().await;
    service.request(Method::DELETE, "/orders/o1", None, &[]).await.expect_problem(405, "method");
}

/// Values shaped like SQL injections, for SQLite and PostgreSQL alike.
const HOSTILE: [&str; 7] = [
    "' OR '1'='1",
    "x'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "o1' UNION SELECT * FROM sqlite_master --",
    "%' OR 1=1; DELETE FROM audit_events; --",
    "o1'; DROP SCHEMA public CASCADE; --",
    "1; SELECT pg_sleep(10) --",
];

/// Every query parameter and id of the API, holding `text`.
fn hostile_paths(text: &str) -> Vec<String> {
    let value = urlencode(text);
    vec![
        format!("/orders?customer_id={value}"),
        format!("/orders?status={value}"),
        format!("/orders?after={value}"),
        format!("/reports/sales?from=2020-01-01&to=2030-01-01&sku={value}"),
        format!("/audit?correlation_id={value}"),
        format!("/audit?user={value}"),
        format!("/audit?stream=order/{value}"),
        format!("/admin/streams/order/{value}"),
        format!("/customers/{value}"),
        format!("/admin/projections/{value}/parked"),
        format!("/admin/sagas/fulfilment/{value}"),
    ]
}

/// A hostile query is refused or finds nothing; it never fails the server.
fn assert_only_data(path: &str, status: u16, body: &serde_json::Value) {
    assert!((400..500).contains(&status) || status == 200, "{path}: {status} {body}");
    if status == 200 {
        let listed = body["orders"].as_array().or(body["events"].as_array());
        assert!(listed.is_none_or(Vec::is_empty), "{path} found nothing: {body}");
    }
}

/// A name written as an injection.
const EVIL_NAME: &str = "Robert'); DROP TABLE events;--";

#[tokio::test]
async fn sql_in_any_parameter_is_only_ever_data() {
    let service = Service::start().await;
    service.seed().await;
    service.settled().await;
    let head = service.head();
    let order = service.view("/orders/o1").await.body;
    for text in HOSTILE {
        for path in hostile_paths(text) {
            let answer = service.get(&path).await;
            assert_only_data(&path, answer.status.as_u16(), &answer.body);
        }
        let refused = service
            .post("/customers", json!({"customer_id": text, "name": text, "email": text}))
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{text}: {}", refused.body);
    }
    // Names are data: stored and shown as sent.
    let created = service
        .post("/customers", json!({"customer_id": "bobby", "name": EVIL_NAME, "email": "b@x"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(service.view("/customers/bobby").await.body["name"], EVIL_NAME);
    assert_eq!(service.head(), head + 1, "only the one registration was written");
    assert_eq!(service.view("/orders/o1").await.body, order, "nothing else changed");
    let audit = service.get("/audit?stream=order/o1").await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(!audit.body["events"].as_array().unwrap().is_empty(), "the audit is intact");
}

#[tokio::test]
async fn sql_in_any_parameter_is_only_ever_data_on_postgres() {
    let Some(database) = strata_testkit::services::postgres().await else { return };
    let server = crate::process::Server::spawn(&["--store", &database.url()]);
    let setup = [
        ("/customers", json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"})),
        ("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})),
        (
            "/orders",
            json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 2}]}),
        ),
    ];
    let mut position = 0;
    for (path, body) in setup {
        let (status, answer) = server.send("POST", path, Some(body)).await;
        assert_eq!(status, 201, "{path}: {answer}");
        position = answer["position"].as_u64().unwrap();
    }
    let wait = |path: &str, position: u64| format!("{path}?min_position={position}&wait_ms=10000");
    let (_, order) = server.send("GET", &wait("/orders/o1", position), None).await;
    for text in HOSTILE {
        for path in hostile_paths(text) {
            let (status, body) = server.send("GET", &path, None).await;
            assert_only_data(&path, status, &body);
        }
        let body = json!({"customer_id": text, "name": text, "email": text});
        let (status, answer) = server.send("POST", "/customers", Some(body)).await;
        assert_eq!(status, 400, "{text}: {answer}");
    }
    let body = json!({"customer_id": "bobby", "name": EVIL_NAME, "email": "b@x"});
    let (status, created) = server.send("POST", "/customers", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let registered = created["position"].as_u64().unwrap();
    assert_eq!(registered, position + 1, "only the one registration was written");
    let (_, bobby) = server.send("GET", &wait("/customers/bobby", registered), None).await;
    assert_eq!(bobby["name"], EVIL_NAME);
    assert_eq!(server.send("GET", "/orders/o1", None).await.1, order, "nothing else changed");
    let (status, log) = server.send("GET", "/admin/events?after=0", None).await;
    assert_eq!(status, 200);
    assert_eq!(log["head"], registered, "the log holds every event and no more");
    // The audit projection follows the log on its own; its table is intact once it shows o1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, audit) = server.send("GET", "/audit?stream=order/o1", None).await;
        assert_eq!(status, 200, "{audit}");
        if audit["events"].as_array().is_some_and(|events| !events.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the audit never showed o1: {audit}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

//! Every route's success path, as the README walks a newcomer through it.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Service;

#[tokio::test]
async fn customers_are_registered_and_read_back() {
    let service = Service::start().await;
    let created = service
        .post(
            "/customers",
            json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body, json!({"id": "ada", "position": 1}));

    let view = service.view("/customers/ada").await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(view.body, json!({"id": "ada", "name": "Ada", "email": "ada@example.com"}));
    assert_eq!(view.header("x-view-position"), Some("1"));

    let orders = service.view("/customers/ada/orders").await;
    assert_eq!(orders.body, json!({"customer_id": "ada", "orders": [], "next": null}));
}

#[tokio::test]
async fn ids_left_out_are_generated_as_uuid_v7() {
    let service = Service::start().await;
    let created =
        service.post("/customers", json!({"name": "Bob", "email": "bob@example.com"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(service.view(&format!("/customers/{id}")).await.body["name"], "Bob");
}

#[tokio::test]
async fn products_are_created_restocked_and_read_back() {
    let service = Service::start().await;
    let created =
        service.post("/products", json!({"sku": "tea", "name": "Tea", "price_cents": 450})).await;
    assert_eq!(
        (created.status, created.body.clone()),
        (StatusCode::CREATED, json!({"id": "tea", "position": 1}))
    );
    let restocked = service.post("/products/tea/restock", json!({"qty": 10})).await;
    assert_eq!(
        (restocked.status, restocked.body.clone()),
        (StatusCode::OK, json!({"id": "tea", "position": 2}))
    );
    service.post("/products/tea/restock", json!({"qty": 5})).await;
    let view = service.view("/products/tea").await;
    assert_eq!(
        view.body,
        json!({"sku": "tea", "name": "Tea", "price_cents": 450, "on_hand": 15, "reserved": 0, "available": 15})
    );
}

#[tokio::test]
async fn an_order_goes_from_placed_to_shipped_with_lines_priced_when_added() {
    let service = Service::start().await;
    service.seed().await;
    let line = service.post("/orders/o1/lines", json!({"sku": "cake", "qty": 3})).await;
    assert_eq!(line.status, StatusCode::OK);
    assert_eq!(line.body["id"], "o1");

    let order = service.view("/orders/o1").await;
    assert_eq!(order.status, StatusCode::OK);
    assert_eq!(order.body["status"], "placed");
    assert_eq!(order.body["customer_id"], "ada");
    assert_eq!(
        order.body["lines"],
        json!([{"sku": "tea", "qty": 2, "price_cents": 450}, {"sku": "cake", "qty": 3, "price_cents": 300}])
    );
    assert_eq!(order.body["total_cents"], 1800);
    assert_eq!(order.body["version"], 2);
    assert_eq!(order.header("etag"), Some("\"2\""));
    assert!(order.body["placed_at"].as_str().is_some_and(|t| t.starts_with("20")));

    // Confirming waits for the fulfilment saga, which reserves every line's stock.
    let confirmed = service.post("/orders/o1/confirm", json!({})).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(
        (&confirmed.body["id"], &confirmed.body["status"]),
        (&json!("o1"), &json!("confirmed"))
    );
    let tea = service.get(&format!("/products/tea?min_position={}", confirmed.position())).await;
    assert_eq!(
        (&tea.body["on_hand"], &tea.body["reserved"], &tea.body["available"]),
        (&json!(100), &json!(2), &json!(98))
    );
    let shipped = service.post("/orders/o1/ship", json!({})).await;
    assert_eq!(shipped.status, StatusCode::OK);
    let order = service.get(&format!("/orders/o1?min_position={}", shipped.position())).await;
    assert_eq!(
        (order.body["status"].as_str(), order.body["version"].as_u64()),
        (Some("shipped"), Some(5))
    );
    // Shipping takes the reservations out of the stock (the saga does it after the ship).
    service.saga_reaches("o1", "completed").await;
    let tea = service.view("/products/tea").await;
    assert_eq!((&tea.body["on_hand"], &tea.body["reserved"]), (&json!(98), &json!(0)));

    let mine = service.view("/customers/ada/orders").await;
    let listed = &mine.body["orders"][0];
    assert_eq!(
        (listed["id"].as_str(), listed["status"].as_str(), listed["total_cents"].as_i64()),
        (Some("o1"), Some("shipped"), Some(1800))
    );
    assert_eq!(listed["placed_at"], order.body["placed_at"]);
}

#[tokio::test]
async fn an_order_keeps_payment_and_shipping_details_and_can_be_cancelled() {
    let service = Service::start().await;
    service.seed().await;
    let placed = service
        .post("/orders", json!({"order_id": "o2", "customer_id": "ada", "lines": [], "payment_method": "card", "shipping_address": "1 Main St"}))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(
        service.post("/orders/o2/cancel", json!({"reason": "changed my mind"})).await.status,
        StatusCode::OK
    );
    let order = service.view("/orders/o2").await;
    assert_eq!(order.body["payment_method"], "card");
    assert_eq!(order.body["shipping_address"], "1 Main St");
    assert_eq!(order.body["status"], "cancelled");
}

#[tokio::test]
async fn the_correlation_id_is_echoed_and_stored_on_every_event() {
    let service = Service::start().await;
    service.seed().await;
    let answer = service
        .request(
            Method::POST,
            "/orders/o1/lines",
            Some(r#"{"sku":"cake","qty":1}"#),
            &[("x-correlation-id", "trace-42")],
        )
        .await;
    assert_eq!(answer.header("x-correlation-id"), Some("trace-42"));
    let generated = service.get("/health").await;
    assert!(generated.header("x-correlation-id").is_some_and(|id| !id.is_empty()));

    let stream = service.get("/admin/streams/order/o1").await;
    assert_eq!(stream.status, StatusCode::OK);
    let events = stream.body.as_array().unwrap();
    assert_eq!(events.len(), 2);
    let added = &events[1];
    assert_eq!(added["type"], "LineAdded");
    assert_eq!((added["version"].as_u64(), added["schema_version"].as_u64()), (Some(2), Some(1)));
    assert_eq!(added["position"].as_u64(), Some(answer.position()));
    assert_eq!(added["data"]["line"], json!({"sku": "cake", "qty": 1, "price_cents": 300}));
    let metadata = &added["metadata"];
    assert_eq!(metadata["correlation_id"], "trace-42");
    assert!(metadata["event_id"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));
    assert!(metadata["causation_id"].is_string());
    assert!(metadata["user"].is_null());
    assert!(metadata["recorded_at"].is_string());
    assert_eq!(events[0]["type"], "OrderPlaced");
}

#[tokio::test]
async fn admin_lists_projections_and_health_names_the_node() {
    let service = Service::start().await;
    service.seed().await;
    service.view("/orders/o1").await;
    service.view("/customers/ada").await;
    service.view("/customers/ada/orders").await;
    service.view("/products/cake").await;
    service.view("/reports/sales?from=2026-01-01&to=2026-12-31").await;
    service.settled().await;
    let projections = service.get("/admin/projections").await;
    assert_eq!(projections.status, StatusCode::OK);
    let list = projections.body.as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "customers",
            "customer_orders",
            "products",
            "orders",
            "sales_daily",
            "audit",
            "fulfilment"
        ]
    );
    for projection in list {
        assert_eq!(projection["head"].as_u64(), Some(service.head()));
        assert_eq!(projection["position"], projection["head"]);
        assert_eq!(projection["lag_events"], 0);
        assert_eq!(projection["lag_seconds"], 0.0);
        assert_eq!(projection["owner"], "test-node");
        assert_eq!(
            (projection["status"].as_str(), projection["parked"].as_u64()),
            (Some("running"), Some(0))
        );
        assert_eq!((&projection["rebuild"], &projection["error"]), (&Value::Null, &Value::Null));
    }
    let health = service.get("/health").await;
    assert_eq!(
        (health.status, health.body.clone()),
        (
            StatusCode::OK,
            json!({"status": "ok", "node_id": "test-node",
                   "checks": {"store": "ok", "projections": "ok"}, "failing": []})
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_nodes_at_once_acts_once_and_the_other_answer_says_replayed() {
    use tower::ServiceExt;
    let service = Service::start().await;
    service.seed().await;
    // A second router over the same store is a second node: it has its own in-flight keys,
    // so the two requests race to the store, and one finds the key taken by the other.
    let nodes =
        [orders::http::router(service.app.clone()), orders::http::router(service.app.clone())];
    for round in 0..20 {
        let head = service.head();
        let send = |node: axum::Router| async move {
            let request = axum::http::Request::builder()
                .method(Method::POST)
                .uri("/products/tea/restock")
                .header("content-type", "application/json")
                .header("idempotency-key", format!("restock-{round}"))
                .body(axum::body::Body::from(r#"{"qty":1}"#))
                .unwrap();
            let response = node.oneshot(request).await.unwrap();
            let replayed = response.headers().get("idempotency-replayed").is_some();
            (response.status(), replayed)
        };
        let (a, b) = tokio::join!(send(nodes[0].clone()), send(nodes[1].clone()));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "round {round}");
        assert_eq!(service.head(), head + 1, "round {round}: one restock");
        assert!(a.1 != b.1, "round {round}: exactly one answer is the replay: {a:?} {b:?}");
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_appends_nothing() {
    let service = Service::start().await;
    service.seed().await;
    let key = [("idempotency-key", "add-cake-1")];
    let body = r#"{"sku":"cake","qty":1}"#;
    let first = service.request(Method::POST, "/orders/o1/lines", Some(body), &key).await;
    assert_eq!(first.status, StatusCode::OK);
    let head = service.head();
    let again = service.request(Method::POST, "/orders/o1/lines", Some(body), &key).await;
    assert_eq!(
        (again.status, &again.body),
        (first.status, &first.body),
        "the retry gets the first answer"
    );
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(service.head(), head, "the retry appended nothing");
    // If-Match belongs to the request: the same body under another condition is refused.
    let conditional = [("idempotency-key", "add-cake-1"), ("if-match", "\"2\"")];
    let other = service.request(Method::POST, "/orders/o1/lines", Some(body), &conditional).await;
    other.expect_problem(422, "If-Match");

    let other = service
        .request(Method::POST, "/orders/o1/lines", Some(r#"{"sku":"cake","qty":2}"#), &key)
        .await;
    other.expect_problem(422, "different");
    assert_eq!(service.head(), head);

    // Refusals are remembered too: the retry of a 404 stays a 404 even once the order exists.
    let missing = [("idempotency-key", "confirm-o9")];
    let refused = service.request(Method::POST, "/orders/o9/confirm", Some("{}"), &missing).await;
    refused.expect_problem(404, "does not exist");
    service.post("/orders", json!({"order_id": "o9", "customer_id": "ada", "lines": []})).await;
    let replayed = service.request(Method::POST, "/orders/o9/confirm", Some("{}"), &missing).await;
    replayed.expect_problem(404, "does not exist");
}

#[tokio::test]
async fn if_match_makes_a_command_conditional_on_the_version() {
    let service = Service::start().await;
    service.seed().await;
    let stale = service
        .request(Method::POST, "/orders/o1/confirm", Some("{}"), &[("if-match", "\"7\"")])
        .await;
    stale.expect_problem(412, "version 1");
    let current = service
        .request(Method::POST, "/orders/o1/confirm", Some("{}"), &[("if-match", "\"1\"")])
        .await;
    assert_eq!(current.status, StatusCode::OK);
    // The answer is the decided order: requested at version 2, confirmed at 3.
    assert_eq!(current.header("etag"), Some("\"3\""));
}

#[tokio::test]
async fn metrics_export_group_commits_and_projection_progress() {
    let service = Service::start().await;
    service.seed().await;
    service.view("/orders/o1").await;
    service.saga_reaches("o1", "active").await;
    let request =
        axum::http::Request::builder().uri("/metrics").body(axum::body::Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(orders::http::router(service.app.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("strata_store_head_position"), 6.0);
    assert_eq!(value("strata_group_commit_appends_total"), 6.0, "one append per command");
    assert_eq!(value("strata_group_commit_events_total"), 6.0);
    assert!(value("strata_group_commit_groups_total") >= 1.0);
    // Group sizes as a histogram: every group in a bucket, and the appends they held.
    let groups = value("strata_group_commit_groups_total");
    assert_eq!(value("strata_group_commit_group_size_count"), groups);
    assert_eq!(value("strata_group_commit_group_size_bucket{le=\"+Inf\"}"), groups);
    assert_eq!(value("strata_group_commit_group_size_sum"), 6.0);
    assert!(value("strata_group_commit_group_size_bucket{le=\"1.0\"}") >= 1.0);
    assert_eq!(value("strata_projection_position{projection=\"orders\"}"), 6.0);
    assert_eq!(value("strata_projection_lag_events{projection=\"orders\"}"), 0.0);
    assert_eq!(value("strata_saga_instances{saga=\"fulfilment\",state=\"active\"}"), 1.0);
    assert_eq!(value("strata_saga_instances{saga=\"fulfilment\",state=\"failed\"}"), 0.0);

    // Through the service's own router, its requests are counted too.
    service.post("/products/tea/restock", json!({"qty": 0})).await.expect_problem(422, "qty");
    let text = service.get_text("/metrics").await;
    check_exposition(&text);
    let sample = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let created = "strata_http_requests_total{route=\"/customers\",method=\"POST\",status=\"201\"}";
    assert_eq!(sample(created), 1.0, "the seed registered one customer");
    assert!(sample("strata_http_request_duration_seconds_count{route=\"/orders/{id}\"}") >= 1.0);
    let placed = "strata_commands_total{aggregate=\"order\",command=\"Place\",outcome=\"ok\"}";
    assert_eq!(sample(placed), 1.0);
    let refused =
        "strata_commands_total{aggregate=\"product\",command=\"Restock\",outcome=\"rejected\"}";
    assert_eq!(sample(refused), 1.0);
    assert!(
        text.contains("strata_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/orders\"}")
            || text.contains(
                "strata_http_request_duration_seconds_bucket{route=\"/orders\",le=\"+Inf\"}"
            )
    );
}

/// Checks `text` line by line against the OpenMetrics text format: metadata lines, samples
/// of a declared family with well-formed labels and a number, and `# EOF` last.
fn check_exposition(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut declared: Vec<String> = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut words = meta.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap_or_default());
            assert!(matches!(kind, "HELP" | "TYPE" | "UNIT"), "{line}");
            assert!(name_ok(name), "{line}");
            if kind == "TYPE" {
                let family_type = words.next().unwrap_or_default();
                assert!(matches!(family_type, "counter" | "gauge" | "histogram"), "{line}");
                declared.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                (name, labels.strip_suffix('}').unwrap_or_else(|| panic!("{line}")))
            }
            None => (series, ""),
        };
        assert!(name_ok(name), "{line}");
        assert!(
            declared.iter().any(|family| name.starts_with(family.as_str())),
            "undeclared: {line}"
        );
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label: {line}"));
            assert!(name_ok(key), "label name in {line}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated label value: {line}"));
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        }
    }
}

#[tokio::test]
async fn reads_answer_304_to_a_matching_if_none_match_and_bodies_end_with_a_newline() {
    let service = Service::start().await;
    service.seed().await;
    let order = service.view("/orders/o1").await;
    assert_eq!(order.header("etag"), Some("\"1\""), "an order's tag is its version");
    let customer = service.view("/customers/ada").await;
    let tag = customer.header("etag").expect("every read has a tag").to_owned();
    for (path, tag) in [("/orders/o1", "\"1\""), ("/customers/ada", tag.as_str())] {
        let again = service.request(Method::GET, path, None, &[("if-none-match", tag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!((again.body.clone(), again.header("etag")), (Value::Null, Some(tag)), "{path}");
        let changed = service.request(Method::GET, path, None, &[("if-none-match", "\"x\"")]).await;
        assert_eq!(changed.status, StatusCode::OK, "{path}: another tag gets the view");
    }
    // After a change the old tag no longer matches.
    service.post("/orders/o1/lines", json!({"sku": "cake", "qty": 1})).await;
    let changed = service
        .request(
            Method::GET,
            &format!("/orders/o1?min_position={}", service.head()),
            None,
            &[("if-none-match", "\"1\"")],
        )
        .await;
    assert_eq!((changed.status, changed.header("etag")), (StatusCode::OK, Some("\"2\"")));

    let head = service.request(Method::HEAD, "/customers/ada", None, &[]).await;
    assert_eq!(head.header("etag"), Some(tag.as_str()), "HEAD tags as GET does");
    // A read's digest is no version: as If-Match it fails the precondition.
    let product = service.view("/products/tea").await;
    let digest = product.header("etag").unwrap().to_owned();
    let restock = service
        .request(
            Method::POST,
            "/products/tea/restock",
            Some(r#"{"qty":1}"#),
            &[("if-match", &digest)],
        )
        .await;
    restock.expect_problem(412, "not an aggregate version");
    assert!(service.get_text("/customers/ada").await.ends_with("}\n"), "JSON ends with a newline");
    let empty = service.request(Method::POST, "/orders/o1/confirm", Some(""), &[]).await;
    empty.expect_problem(400, "expected a JSON object");
}

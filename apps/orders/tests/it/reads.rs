//! The query side beyond single documents: order lists paged by key while orders keep
//! arriving, filters, the sales report against a direct computation over the test's own
//! orders, and audits of one request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use strata::{EventStore, Position, StreamId, Version};

use crate::support::{Answer, Service};

async fn place(service: &Service, id: &str, customer: &str, lines: Value) -> Answer {
    let answer = service
        .post("/orders", json!({"order_id": id, "customer_id": customer, "lines": lines}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer
}

async fn customers(service: &Service) {
    for id in ["ada", "bob", "cy"] {
        service
            .post(
                "/customers",
                json!({"customer_id": id, "name": id, "email": format!("{id}@example.com")}),
            )
            .await;
    }
}

/// Every id a list hands out, following `next` until it is null.
async fn every_page(service: &Service, first: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = first.to_owned();
    loop {
        let page = service.view(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        ids.extend(
            page.body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page.body["next"].as_str() {
            Some(next) => path = format!("{first}&after={next}"),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_order_once_while_orders_are_placed() {
    let service = Arc::new(Service::start().await);
    service.seed().await;
    customers(&service).await;
    let mut existing = HashSet::from(["o1".to_owned()]);
    for n in 0..40 {
        let customer = ["ada", "bob", "cy"][n % 3];
        place(&service, &format!("p{n}"), customer, json!([{"sku": "tea", "qty": 1}])).await;
        existing.insert(format!("p{n}"));
    }
    let placing = {
        let service = service.clone();
        tokio::spawn(async move {
            for n in 0..30 {
                place(&service, &format!("late{n}"), "ada", json!([])).await;
            }
        })
    };
    let mut seen = every_page(&service, "/orders?limit=7").await;
    placing.await.unwrap();
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no order appears twice: {seen:?}");
    assert!(existing.is_subset(&unique), "every order placed before paging began appears");
    seen.retain(|id| !id.starts_with("late"));
    let mut newest_first: Vec<String> = (0..40).rev().map(|n| format!("p{n}")).collect();
    newest_first.push("o1".to_owned());
    assert_eq!(seen, newest_first, "newest first");

    // A customer's list is the same rows, filtered.
    let bobs = every_page(&service, "/customers/bob/orders?limit=5").await;
    let expected: Vec<String> =
        (0..40).rev().filter(|n| n % 3 == 1).map(|n| format!("p{n}")).collect();
    assert_eq!(bobs, expected);
    let page = service.view("/customers/bob/orders?limit=2").await;
    assert_eq!(page.body["customer_id"], "bob");
    assert_eq!(page.body["orders"][0]["lines"][0]["sku"], "tea", "entries are whole order views");
}

#[tokio::test]
async fn lists_filter_by_customer_status_and_time() {
    let service = Service::start().await;
    service.seed().await;
    customers(&service).await;
    place(&service, "a1", "bob", json!([{"sku": "tea", "qty": 1}])).await;
    let middle = service.view("/orders/a1").await.body["placed_at"].as_str().unwrap().to_owned();
    place(&service, "a2", "bob", json!([{"sku": "cake", "qty": 1}])).await;
    place(&service, "a3", "cy", json!([])).await;
    service.post("/orders/a2/confirm", json!({})).await;
    service.post("/orders/a3/cancel", json!({"reason": "changed mind"})).await;
    let ids = |answer: Answer| -> Vec<String> {
        answer.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(service.view("/orders?customer_id=bob").await), ["a2", "a1"]);
    assert_eq!(ids(service.view("/orders?status=confirmed").await), ["a2"]);
    assert_eq!(ids(service.view("/orders?status=cancelled&customer_id=cy").await), ["a3"]);
    assert_eq!(
        ids(service.view(&format!("/orders?customer_id=bob&placed_to={middle}")).await),
        Vec::<String>::new(),
        "placed_to is exclusive"
    );
    assert_eq!(
        ids(service.view(&format!("/orders?customer_id=bob&placed_from={middle}")).await),
        ["a2", "a1"],
        "placed_from is inclusive"
    );
    let far = "2100-01-01T00:00:00Z";
    assert!(ids(service.view(&format!("/orders?placed_from={far}")).await).is_empty());

    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("status=lost", "status"),
        ("placed_from=yesterday", "placed_from"),
        ("placed_from=2026-02-01T00:00:00Z&placed_to=2026-01-01T00:00:00Z", "placed_from"),
        ("after=not-a-cursor", "after"),
        ("customer_id=no%20spaces", "customer_id"),
    ] {
        service.get(&format!("/orders?{query}")).await.expect_problem(400, says);
    }
    service.get("/customers/nobody/orders").await.expect_problem(404, "nobody");
    service.get("/customers/bob/orders?customer_id=cy").await.expect_problem(400, "customer_id");
}

/// The sales report computed directly from the orders' events, as the test wrote them.
async fn expected_sales(
    service: &Service,
    orders: &[&str],
) -> (BTreeMap<(NaiveDate, String), (i64, i64, i64)>, i64) {
    let mut sales = BTreeMap::new();
    let mut counted = 0;
    for id in orders {
        let events = service
            .app
            .events()
            .read_stream(&StreamId::new("order", *id), Version::NONE)
            .await
            .unwrap();
        let mut lines: Vec<(String, i64, i64)> = Vec::new();
        let mut confirmed: Option<DateTime<Utc>> = None;
        let mut cancelled = false;
        for event in events {
            let data: Value = serde_json::from_slice(&event.payload).unwrap();
            match event.event_type.as_str() {
                "OrderPlaced" => {
                    for line in data["lines"].as_array().unwrap() {
                        lines.push((
                            line["sku"].as_str().unwrap().to_owned(),
                            line["qty"].as_i64().unwrap(),
                            line["price_cents"].as_i64().unwrap(),
                        ));
                    }
                }
                "LineAdded" => {
                    let line = &data["line"];
                    lines.push((
                        line["sku"].as_str().unwrap().to_owned(),
                        line["qty"].as_i64().unwrap(),
                        line["price_cents"].as_i64().unwrap(),
                    ));
                }
                "OrderConfirmed" => confirmed = Some(event.metadata.recorded_at),
                "OrderCancelled" => cancelled = true,
                _ => {}
            }
        }
        let Some(confirmed) = confirmed.filter(|_| !cancelled) else { continue };
        counted += 1;
        let mut skus: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (sku, qty, price) in lines {
            let entry = skus.entry(sku).or_default();
            entry.0 += qty;
            entry.1 += qty * price;
        }
        for (sku, (units, revenue)) in skus {
            let row = sales.entry((confirmed.date_naive(), sku)).or_insert((0, 0, 0));
            row.0 += 1;
            row.1 += units;
            row.2 += revenue;
        }
    }
    (sales, counted)
}

#[tokio::test]
async fn the_sales_report_equals_a_direct_computation_including_cancellations() {
    let service = Service::start().await;
    service.seed().await; // o1: 2 tea, placed only
    let orders = ["o1", "s1", "s2", "s3", "s4"];
    place(&service, "s1", "ada", json!([{"sku": "tea", "qty": 2}, {"sku": "cake", "qty": 1}]))
        .await;
    place(&service, "s2", "ada", json!([{"sku": "tea", "qty": 1}])).await;
    place(&service, "s3", "ada", json!([{"sku": "cake", "qty": 3}])).await;
    place(&service, "s4", "ada", json!([{"sku": "tea", "qty": 1}])).await;
    service.post("/orders/s4/lines", json!({"sku": "tea", "qty": 4})).await;
    for id in ["s1", "s2", "s3", "s4"] {
        assert_eq!(
            service.post(&format!("/orders/{id}/confirm"), json!({})).await.status,
            StatusCode::OK
        );
    }
    service.post("/orders/s2/cancel", json!({"reason": "out of tea"})).await;
    service.post("/orders/s3/ship", json!({})).await;

    let (expected, counted) = expected_sales(&service, &orders).await;
    let days: Vec<NaiveDate> = expected.keys().map(|(day, _)| *day).collect();
    let (from, to) = (days.first().copied().unwrap(), days.last().copied().unwrap());
    let report = service.view(&format!("/reports/sales?from={from}&to={to}")).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    let rows: BTreeMap<(NaiveDate, String), (i64, i64, i64)> = report.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let day = NaiveDate::parse_from_str(row["day"].as_str().unwrap(), "%Y-%m-%d").unwrap();
            let figures = (
                row["orders"].as_i64().unwrap(),
                row["units"].as_i64().unwrap(),
                row["revenue_cents"].as_i64().unwrap(),
            );
            ((day, row["sku"].as_str().unwrap().to_owned()), figures)
        })
        .collect();
    assert_eq!(rows, expected, "rows by day and sku, cancellations taken out");
    let listed: Vec<(String, String)> = report.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["day"].to_string(), r["sku"].to_string()))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "rows come by day, then sku");
    let sum = |i: usize| expected.values().map(|f| [f.0, f.1, f.2][i]).sum::<i64>();
    assert_eq!(
        report.body["totals"],
        json!({"orders": counted, "units": sum(1), "revenue_cents": sum(2)})
    );
    assert_eq!((counted, sum(0)), (3, 4), "three orders, each once in the total; four in the rows");
    assert_eq!(
        (report.body["from"].as_str(), report.body["parked"].as_u64()),
        (Some(from.to_string().as_str()), Some(0))
    );
    // tea: s1 (2) and s4 (1 + 4) count, s2 was cancelled; cake: s1 (1) and s3 (3).
    assert_eq!(sum(1), 2 + 5 + 1 + 3);

    let tea = service.view(&format!("/reports/sales?from={from}&to={to}&sku=tea")).await;
    assert!(tea.body["rows"].as_array().unwrap().iter().all(|row| row["sku"] == "tea"));
    assert_eq!(
        (tea.body["totals"]["units"].clone(), tea.body["totals"]["orders"].clone()),
        (json!(7), json!(2))
    );
    let before = from.pred_opt().unwrap();
    let empty = service.view(&format!("/reports/sales?from={before}&to={before}")).await;
    assert_eq!(
        (empty.body["rows"].clone(), empty.body["totals"]["orders"].clone()),
        (json!([]), json!(0))
    );
    for (query, says) in [
        ("from=2026-13-01&to=2026-12-01", "from"),
        ("from=2026-02-01&to=2026-01-01", "after"),
        ("to=2026-01-01", "from is required"),
        ("from=2026-01-01&to=tomorrow", "to"),
    ] {
        service.get(&format!("/reports/sales?{query}")).await.expect_problem(400, says);
    }
}

#[tokio::test]
async fn an_audit_finds_every_event_of_one_request_by_its_correlation_id() {
    let service = Service::start().await;
    service.seed().await;
    let mut caused = Vec::new();
    for (path, body) in [
        ("/orders", json!({"order_id": "r1", "customer_id": "ada", "lines": []})),
        ("/orders/r1/lines", json!({"sku": "tea", "qty": 1})),
        ("/orders/r1/lines", json!({"sku": "cake", "qty": 2})),
        ("/products/tea/restock", json!({"qty": 5})),
    ] {
        let answer = service
            .request(
                axum::http::Method::POST,
                path,
                Some(&body.to_string()),
                &[("x-correlation-id", "checkout-42")],
            )
            .await;
        assert!(answer.status.is_success(), "{}", answer.body);
        caused.push(answer.position());
    }
    service.post("/orders/r1/confirm", json!({})).await;

    let audit = service.view("/audit?correlation_id=checkout-42").await;
    assert_eq!(
        audit.header("x-view-position").map(str::to_owned),
        Some(service.head().to_string())
    );
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let events = audit.body["events"].as_array().unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    caused.reverse();
    assert_eq!(positions, caused, "every event of the request, newest first");
    assert_eq!(audit.body["next"], Value::Null);
    let first = &events[3];
    assert_eq!(
        (first["stream_type"].as_str(), first["stream_id"].as_str(), first["type"].as_str()),
        (Some("order"), Some("r1"), Some("OrderPlaced"))
    );
    assert_eq!((first["version"].as_u64(), first["schema_version"].as_u64()), (Some(1), Some(2)));
    assert_eq!(first["metadata"]["correlation_id"], "checkout-42");
    assert_eq!(first["data"]["customer_id"], "ada");

    let page = service.view("/audit?correlation_id=checkout-42&limit=3").await;
    assert_eq!(page.body["events"].as_array().map(Vec::len), Some(3));
    let next = page.body["next"].as_str().unwrap();
    let rest =
        service.get(&format!("/audit?correlation_id=checkout-42&limit=3&after={next}")).await;
    let last: Vec<u64> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!((last, rest.body["next"].clone()), (vec![positions[3]], Value::Null));

    let stream = service.view("/audit?stream=order/r1").await;
    assert_eq!(
        stream.body["events"].as_array().map(Vec::len),
        Some(5),
        "the stream: placed, two lines, confirming, confirmed"
    );
    // What the fulfilment saga did for the confirmation is audited under its request, as
    // the saga's doing.
    let by_saga = service.view("/audit?user=saga:fulfilment").await;
    let by_saga = by_saga.body["events"].as_array().unwrap().clone();
    let types: Vec<&str> = by_saga.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["OrderConfirmed", "StockReserved", "StockReserved"], "{by_saga:?}");
    let future = service.view("/audit?correlation_id=checkout-42&from=2100-01-01T00:00:00Z").await;
    assert_eq!(future.body["events"], json!([]));
    let head = service.app.events().head();
    assert!(head > Position::START);
    for (query, says) in [
        ("", "exactly one"),
        ("correlation_id=a&user=b", "exactly one"),
        ("stream=order", "TYPE/ID"),
        ("stream=order/", "TYPE/ID"),
        ("user=u&from=soon", "from"),
        ("user=u&limit=0", "limit"),
        ("user=u&after=zz", "after"),
    ] {
        service.get(&format!("/audit?{query}")).await.expect_problem(400, says);
    }
}

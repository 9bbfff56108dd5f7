//! Many clients on one order at once lose nothing.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;

use crate::support::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lines_on_one_order_are_all_kept() {
    const CLIENTS: i64 = 40;
    let service = Arc::new(Service::start().await);
    service.seed().await;
    let mut clients = Vec::new();
    for qty in 1..=CLIENTS {
        let service = service.clone();
        clients.push(tokio::spawn(async move {
            service.post("/orders/o1/lines", json!({"sku": "cake", "qty": qty})).await
        }));
    }
    for client in clients {
        let answer = client.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let order = service.view("/orders/o1").await;
    let lines = order.body["lines"].as_array().unwrap();
    assert_eq!(lines.len() as i64, CLIENTS + 1, "every acknowledged line is in the view");
    let mut quantities: Vec<i64> = lines[1..].iter().map(|l| l["qty"].as_i64().unwrap()).collect();
    quantities.sort_unstable();
    assert_eq!(quantities, (1..=CLIENTS).collect::<Vec<_>>());
    assert_eq!(order.body["version"].as_i64(), Some(CLIENTS + 1));
    let expected_total = 900 + 300 * (CLIENTS * (CLIENTS + 1) / 2);
    assert_eq!(order.body["total_cents"].as_i64(), Some(expected_total));
    let stream = service.get("/admin/streams/order/o1").await;
    assert_eq!(stream.body.as_array().map(Vec::len), Some(CLIENTS as usize + 1));
}

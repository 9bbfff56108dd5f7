//! The operator's day: an event no view can read parks only its order, which answers 503
//! while every other order moves on; the parked work survives a restart and is rebuilt the
//! same way from a deleted `views.sqlite`; a retry parks it again, a skip drops the bad
//! event for good and applies the rest; and every operator route answers problem+json when
//! asked for something that does not exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use serde_json::json;
use strata::{EventMetadata, EventStore, ExpectedVersion, NewEvent, Position, StreamId};

use orders::domain::OrderEvent;
use orders::domain::order::LineAdded;
use orders::domain::{OrderLine, OrdersEvent};
use strata::DomainEvent;

use crate::rebuild::views_equal_a_replay;
use crate::support::Service;

/// Appends `event` to order `id`'s stream directly, as a buggy importer would.
pub async fn append(service: &Service, id: &str, event: NewEvent) -> Position {
    let stream = StreamId::new("order", id);
    service
        .app
        .events()
        .append(&stream, ExpectedVersion::Any, vec![event])
        .await
        .unwrap()
        .last_position
}

pub fn broken_line() -> NewEvent {
    NewEvent {
        event_type: "LineAdded".to_owned(),
        schema_version: 1,
        payload: br#"{"customer_id":"ada","line":{"sku":"tea","quantity":"two"}}"#.to_vec(),
        metadata: EventMetadata::new("importer-7", None),
    }
}

pub fn good_line(sku: &str, qty: i64, price_cents: i64) -> NewEvent {
    let line = OrderLine { sku: sku.to_owned(), qty, price_cents };
    OrdersEvent::Order(OrderEvent::LineAdded(LineAdded { customer_id: "ada".to_owned(), line }))
        .to_new_event(EventMetadata::new("importer-7", None))
        .unwrap()
}

#[tokio::test]
async fn a_poison_event_parks_only_its_order_until_an_operator_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let service = Service::start_in_path(&path).await;
    service.seed().await;
    service
        .post(
            "/orders",
            json!({"order_id": "o2", "customer_id": "ada", "lines": [{"sku": "cake", "qty": 1}]}),
        )
        .await;
    let poison = append(&service, "o1", broken_line()).await;
    append(&service, "o1", good_line("cake", 2, 300)).await;
    service.post("/orders/o2/lines", json!({"sku": "tea", "qty": 1})).await;

    let parked = service.view("/orders/o1").await;
    parked.expect_problem(503, &format!("parked at position {poison}"));
    assert_eq!(parked.body["type"], "urn:strata:problem:view-parked");
    let other = service.view("/orders/o2").await;
    assert_eq!(
        (other.status, other.body["total_cents"].as_i64()),
        (StatusCode::OK, Some(750)),
        "other orders move on"
    );
    let listed = service.view("/customers/ada/orders").await;
    let o1 = listed.body["orders"].as_array().unwrap().iter().find(|o| o["id"] == "o1").unwrap();
    assert_eq!(o1["parked_at_position"], poison.0, "a list says which of its orders are stale");

    service.settled().await;
    let statuses = service.get("/admin/projections").await.body;
    for status in statuses.as_array().unwrap() {
        let unparked = ["customers", "products", "audit"];
        let expected = if unparked.contains(&status["name"].as_str().unwrap()) { 0 } else { 1 };
        assert_eq!(status["parked"], expected, "{status}");
        assert_eq!(
            status["position"].as_u64(),
            Some(service.head()),
            "the checkpoint moved on: {status}"
        );
        assert_eq!(status["status"], "running");
    }
    let waiting = service.get("/admin/projections/orders/parked").await;
    assert_eq!(waiting.status, StatusCode::OK);
    let entry = &waiting.body[0];
    assert_eq!(
        (entry["view_id"].as_str(), entry["position"].as_u64(), entry["events"].as_u64()),
        (Some("o1"), Some(poison.0), Some(2))
    );
    assert_eq!(entry["attempts"], strata::projection::MAX_ATTEMPTS);
    assert!(entry["error"].as_str().unwrap().contains("does not decode"), "{entry}");
    assert!(entry["parked_at"].as_str().is_some());

    // A restart finds the parked work where it was.
    service.stop_and_wait().await;
    let service = Service::start_in_path(&path).await;
    service.view("/orders/o2").await;
    assert_eq!(service.get("/admin/projections/orders/parked").await.body[0]["events"], 2);

    // A retry of an event that still does not decode parks it again, one attempt more.
    let retried = service.post("/admin/projections/orders/parked/o1/retry", json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["parked"]["attempts"], strata::projection::MAX_ATTEMPTS + 1);
    assert_eq!(
        retried.body["view"]["lines"].as_array().map(Vec::len),
        Some(1),
        "its state is the one before the bad event"
    );

    // Skip: the bad event is dropped for good and the rest applies.
    let skipped = service
        .post(
            "/admin/projections/orders/parked/o1/skip",
            json!({"reason": "written by importer 7"}),
        )
        .await;
    assert_eq!(skipped.status, StatusCode::OK, "{}", skipped.body);
    assert_eq!(skipped.body["parked"], serde_json::Value::Null);
    assert_eq!(skipped.body["view"]["total_cents"], 900 + 600);
    let order = service.view("/orders/o1").await;
    assert_eq!(
        (order.status, order.body["lines"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
    let recorded = service.get("/admin/projections/orders/skipped").await.body;
    assert_eq!(recorded.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (
            recorded[0]["view_id"].as_str(),
            recorded[0]["position"].as_u64(),
            recorded[0]["type"].as_str(),
            recorded[0]["reason"].as_str()
        ),
        (Some("o1"), Some(poison.0), Some("LineAdded"), Some("written by importer 7"))
    );
    assert!(
        service.get("/admin/projections/orders/parked").await.body.as_array().unwrap().is_empty()
    );
    // The other projections still hold theirs: a skip is per projection.
    assert_eq!(
        service
            .get("/admin/projections/customer_orders/parked")
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    service.stop_and_wait().await;

    // Deleting views.sqlite replays every view from zero on the next start, and the replay
    // parks the same instances; the skip, kept in the same file, is gone with it.
    for file in ["views.sqlite", "views.sqlite-wal", "views.sqlite-shm"] {
        let _ = std::fs::remove_file(path.join(file));
    }
    let service = Service::start_in_path(&path).await;
    service.view("/orders/o2").await;
    let replayed = service.get("/admin/projections/orders/parked").await.body;
    assert_eq!(
        (replayed[0]["view_id"].as_str(), replayed[0]["position"].as_u64()),
        (Some("o1"), Some(poison.0))
    );
    assert_eq!(service.view("/orders/o2").await.body["total_cents"], 750);
}

#[tokio::test]
async fn operator_routes_refuse_what_does_not_exist_with_problem_json() {
    let service = Service::start().await;
    service.seed().await;
    service.view("/orders/o1").await;
    service
        .get("/admin/projections/nope/parked")
        .await
        .expect_problem(404, "known projections are customers");
    service.post("/admin/projections/nope/rebuild", json!({})).await.expect_problem(404, "nope");
    service
        .post("/admin/projections/orders/parked/o1/retry", json!({}))
        .await
        .expect_problem(404, "no parked instance \"o1\"");
    service
        .post("/admin/projections/orders/parked/zz/skip", json!({"reason": "x"}))
        .await
        .expect_problem(404, "zz");
    service
        .post("/admin/projections/orders/parked/o1/skip", json!({"reason": "  "}))
        .await
        .expect_problem(422, "reason");
    service
        .post("/admin/projections/orders/parked/o1/skip", json!({}))
        .await
        .expect_problem(400, "reason");
    service.get("/admin/projections/orders/skipped").await;
    let head = service.head();
    service
        .request(axum::http::Method::DELETE, "/admin/projections/orders/rebuild", None, &[])
        .await
        .expect_problem(405, "method");
    assert_eq!(service.head(), head, "nothing was written");
}

#[tokio::test]
async fn lag_is_zero_when_caught_up_and_metrics_show_every_projection() {
    let service = Service::start().await;
    service.seed().await;
    service.view("/orders/o1").await;
    service.view("/reports/sales?from=2026-01-01&to=2026-01-01").await;
    let metrics = service.get_text("/metrics").await;
    for name in [
        "strata_projection_lag_seconds{projection=\"orders\"} 0",
        "strata_projection_parked_instances{projection=\"sales_daily\"} 0",
        "strata_projection_rebuilding{projection=\"customers\"} 0",
        "strata_projection_failed{projection=\"products\"} 0",
        "strata_projection_events_applied_total{projection=\"customer_orders\"}",
        "strata_projection_failed_applies_total{projection=\"orders\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

/// Sends one writer's commands until `stop`: orders of its own, lines, and a confirmation,
/// a cancellation or a shipment for some. Returns the statuses it got.
async fn write_until(service: Arc<Service>, writer: usize, stop: Arc<AtomicBool>) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{writer}-{n}");
        let placed = service
            .post(
                "/orders",
                json!({"order_id": id, "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]}),
            )
            .await;
        statuses.push(placed.status.as_u16());
        statuses.push(
            service
                .post(&format!("/orders/{id}/lines"), json!({"sku": "cake", "qty": 2}))
                .await
                .status
                .as_u16(),
        );
        let next = match n % 3 {
            0 => service.post(&format!("/orders/{id}/confirm"), json!({})).await,
            1 => service.post(&format!("/orders/{id}/cancel"), json!({"reason": "test"})).await,
            _ => continue_after(&service, &id).await,
        };
        statuses.push(next.status.as_u16());
        n += 1;
    }
    statuses
}

async fn continue_after(service: &Service, id: &str) -> crate::support::Answer {
    service.post(&format!("/orders/{id}/confirm?wait_ms=30000"), json!({})).await;
    service.post(&format!("/orders/{id}/ship"), json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_under_load_answers_every_query_and_swaps_in_views_equal_to_a_replay() {
    const WRITERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(Service::start_in_path(dir.path()).await);
    service.seed().await;
    // Enough stock that every confirmation reserves.
    for sku in ["tea", "cake"] {
        service.post(&format!("/products/{sku}/restock"), json!({"qty": 1_000_000})).await;
    }
    for n in 0..150 {
        service.post("/orders", json!({"order_id": format!("pre{n}"), "customer_id": "ada", "lines": [{"sku": "cake", "qty": 1}]})).await;
    }
    service.view("/orders/pre149").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(write_until(service.clone(), w, stop.clone()))).collect();
    let reader = {
        let (service, stop) = (service.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for path in [
                    format!("/orders/pre{}", n % 150),
                    "/orders?limit=20".to_owned(),
                    "/customers/ada/orders?limit=5&status=confirmed".to_owned(),
                    "/reports/sales?from=2000-01-01&to=2100-01-01".to_owned(),
                    "/products/tea".to_owned(),
                    "/customers/ada".to_owned(),
                ] {
                    statuses.push((path.clone(), service.get(&path).await.status.as_u16()));
                }
                n += 1;
            }
            statuses
        })
    };

    let names = orders::views::PROJECTIONS;
    for name in names {
        let asked = service.post(&format!("/admin/projections/{name}/rebuild"), json!({})).await;
        assert_eq!(
            (asked.status, asked.body.clone()),
            (StatusCode::ACCEPTED, json!({"name": name, "status": "rebuilding"}))
        );
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut saw_progress = false;
    loop {
        let statuses = service.get("/admin/projections").await.body;
        let statuses = statuses.as_array().unwrap();
        saw_progress |= statuses
            .iter()
            .any(|s| s["status"] == "rebuilding" && s["rebuild"]["head"].as_u64() > Some(0));
        if statuses.iter().all(|s| s["status"] == "running" && s["rebuild"].is_null()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuilds never finished: {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(saw_progress, "a rebuild in progress reports where it is");
    // Keep writing a little past the swaps, then stop.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut commands = 0;
    for writer in writers {
        let statuses = writer.await.unwrap();
        commands += statuses.len();
        assert!(
            statuses.iter().all(|s| (200..300).contains(s)),
            "every command succeeded: {statuses:?}"
        );
    }
    let queries = reader.await.unwrap();
    let failed: Vec<_> = queries.iter().filter(|(_, status)| *status >= 500).collect();
    assert!(failed.is_empty(), "no query answered 5xx during the rebuilds: {failed:?}");
    eprintln!(
        "rebuild under load: {commands} commands and {} queries while {} projections rebuilt",
        queries.len(),
        names.len()
    );

    // The saga goes on after the writers stop (shipments leave the stock); once it has
    // caught up with the log it has nothing more to send.
    service.settled().await;
    let head = service.head();
    for name in names {
        let handle = service.app.projection(name).unwrap();
        handle.wait_for(Position(head), std::time::Duration::from_secs(30)).await.unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    let replayed = Arc::new(strata_sqlite::SqliteViewManager::open(fresh.path()).unwrap());
    let mut ids: Vec<String> = (0..150).map(|n| format!("pre{n}")).collect();
    ids.push("o1".to_owned());
    for w in 0..WRITERS {
        ids.push(format!("w{w}-0"));
    }
    views_equal_a_replay(
        service.app.events().clone(),
        service.app.views.as_ref(),
        replayed,
        &["ada"],
        &["tea", "cake"],
        &ids,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_built_by_an_older_definition_are_rebuilt_when_the_service_starts() {
    use strata::{Commit, Slot, ViewManager};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let service = Service::start_in_path(&path).await;
    service.seed().await;
    for id in ["u1", "u2"] {
        service.post("/orders", json!({"order_id": id, "customer_id": "ada", "lines": []})).await;
    }
    service.view("/customers/ada/orders").await;
    let head = Position(service.head());
    service.stop_and_wait().await;

    // As the first release left customer_orders: at the head, built by version 1 of its
    // definition, with nothing in today's list table.
    {
        let views = strata_sqlite::SqliteViewManager::open(&path).unwrap();
        let tables = [&orders::views::CUSTOMER_ORDERS];
        let live = views.checkpoint("customer_orders", Slot::Live).await.unwrap();
        let begun =
            views.begin_rebuild("customer_orders", &tables, 1, chrono::Utc::now()).await.unwrap();
        views
            .commit::<orders::views::ListedOrder>(
                "customer_orders",
                Slot::Rebuild,
                Commit::new(begun, head),
            )
            .await
            .unwrap();
        views.finish_rebuild("customer_orders", &tables, begun.next(head), live).await.unwrap();
        assert_eq!(views.record("customer_orders").await.unwrap().version, 1);
    }

    let service = Service::start_in_path(&path).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = service.get("/customers/ada/orders").await;
        if listed.body["orders"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the list was never rebuilt: {}",
            listed.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let views = service.app.views.clone();
    assert_eq!(
        views.record("customer_orders").await.unwrap().version,
        orders::views::customer_orders().version(),
        "rebuilt by today's definition"
    );
}

/// Overwrites pages of `views.sqlite` in `dir`, as a bad disk or a torn copy leaves them,
/// once the write-ahead log is folded into the file.
fn damage_views_file(dir: &std::path::Path) {
    let views = dir.join("views.sqlite");
    let connection = rusqlite::Connection::open(&views).unwrap();
    connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    drop(connection);
    let mut bytes = std::fs::read(&views).unwrap();
    let page = 4096;
    assert!(bytes.len() > 6 * page, "views.sqlite has {} bytes", bytes.len());
    bytes[page..6 * page].fill(0xAB);
    std::fs::write(&views, bytes).unwrap();
}

/// Damages `views.sqlite` under the running service and asks for a rebuild, which repairs.
async fn damage_and_rebuild(service: &Service, dir: &std::path::Path) {
    damage_views_file(dir);
    let asked = service.post("/admin/projections/orders/rebuild", json!({})).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
}

/// A new order is taken and shows in its view: the projections work after a repair.
async fn projections_move_on(service: &Service) {
    let placed = service
        .post(
            "/orders",
            json!({"order_id": "o3", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]}),
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(service.view("/orders/o3").await.status, StatusCode::OK, "projections move on");
}

#[tokio::test]
async fn a_damaged_views_file_is_set_aside_at_start_and_the_views_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let service = Service::start_in_path(&path).await;
    service.seed().await;
    service.settled().await;
    let before = service.view("/orders/o1").await.body;
    let customer = service.view("/customers/ada").await.body;
    service.stop_and_wait().await;

    damage_views_file(&path);

    let service = Service::start_in_path(&path).await;
    service.settled().await;
    assert_eq!(service.view("/orders/o1").await.body, before, "rebuilt from the log");
    assert_eq!(service.view("/customers/ada").await.body, customer);
    let set_aside: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("views.sqlite.damaged-"))
        .collect();
    assert_eq!(set_aside.len(), 1, "the damaged file is kept for a look: {set_aside:?}");
    projections_move_on(&service).await;
}

#[tokio::test]
async fn views_damaged_while_the_service_runs_are_repaired_by_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let service = Service::start_in_path(&path).await;
    service.seed().await;
    service.settled().await;
    let order = service.view("/orders/o1").await.body;
    let customer = service.view("/customers/ada").await.body;

    // Under the running service this time.
    damage_and_rebuild(&service, &path).await;
    let set_aside = || {
        std::fs::read_dir(&path)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("views.sqlite.damaged-"))
            .filter(|name| !name.ends_with("-wal") && !name.ends_with("-shm"))
            .count()
    };
    assert_eq!(set_aside(), 1, "the rebuild set the damaged file aside");
    // Every projection builds its views again in the fresh file, and the rebuild finishes.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let statuses = service.get("/admin/projections").await.body;
        let settled = statuses
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "running" && s["rebuild"].is_null());
        if settled
            && service.view("/orders/o1").await.body == order
            && service.view("/customers/ada").await.body == customer
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never repaired: {statuses}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health = service.get("/health").await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    projections_move_on(&service).await;
}

#[tokio::test]
async fn views_begun_afresh_while_running_never_reserve_or_confirm_an_order_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let service = Service::start_in_path(&path).await;
    service.seed().await;
    let confirmed = service.post("/orders/o1/confirm", json!({})).await;
    assert_eq!(confirmed.body["status"], "confirmed", "{}", confirmed.body);
    service.settled().await;
    let stream = async |path: &str| service.get(path).await.body.as_array().unwrap().len();
    let (tea, o1) =
        (stream("/admin/streams/product/tea").await, stream("/admin/streams/order/o1").await);
    let saga = service.get("/admin/sagas/fulfilment/o1").await.body;
    assert!(saga["state"].is_string(), "{saga}");

    // The saga's keys have expired, as they do after a day, before its views are repaired.
    let events = rusqlite::Connection::open(path.join("events.sqlite")).unwrap();
    events.execute("DELETE FROM idempotency", []).unwrap();
    drop(events);
    damage_and_rebuild(&service, &path).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    // Every projection, the saga's too, builds again from the log in the fresh file.
    while service.get("/admin/sagas/fulfilment/o1").await.body["history"] != saga["history"] {
        assert!(tokio::time::Instant::now() < deadline, "the saga was never rebuilt");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    service.settled().await;
    assert_eq!(stream("/admin/streams/product/tea").await, tea, "no second reservation");
    assert_eq!(stream("/admin/streams/order/o1").await, o1, "no second confirmation");
}

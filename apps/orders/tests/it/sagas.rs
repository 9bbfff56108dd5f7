//! The fulfilment saga: confirming reserves every line's stock or cancels the order and gives
//! back what it reserved; nothing oversells under concurrent orders; deadlines fire once,
//! across restarts and for stuck sagas; a crash between sending a command and saving the
//! saga's state sends nothing twice; rebuilds never act.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use orders::sagas::FulfilmentSettings;
use serde_json::{Value, json};
use strata::{
    DomainEvent, EventMetadata, EventStore, ExpectedVersion, IdempotencyStore, NewEvent, StreamId,
};

use crate::support::Service;

fn settings(order_ttl: Duration, confirm_timeout: Duration) -> FulfilmentSettings {
    FulfilmentSettings { order_ttl, confirm_timeout }
}

async fn product(service: &Service, sku: &str) -> (i64, i64, i64) {
    let view = service.view(&format!("/products/{sku}")).await.body;
    let field = |name: &str| view[name].as_i64().unwrap();
    (field("on_hand"), field("reserved"), field("available"))
}

async fn stream_types(service: &Service, path: &str) -> Vec<String> {
    let events = service.get(&format!("/admin/streams/{path}")).await.body;
    events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_line_cancels_the_order_and_gives_the_other_lines_stock_back() {
    let service = Service::start().await;
    service.seed().await;
    service.post("/products", json!({"sku": "rare", "name": "Rare", "price_cents": 9000})).await;
    service.post("/products/rare/restock", json!({"qty": 1})).await;
    let lines =
        json!([{"sku": "tea", "qty": 3}, {"sku": "cake", "qty": 2}, {"sku": "rare", "qty": 2}]);
    let placed = service
        .post("/orders", json!({"order_id": "o2", "customer_id": "ada", "lines": lines}))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED);

    let answer = service.post("/orders/o2/confirm", json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!((&answer.body["id"], &answer.body["status"]), (&json!("o2"), &json!("cancelled")));
    let order = service.get(&format!("/orders/o2?min_position={}", answer.position())).await;
    assert_eq!(order.body["cancel_reason"], "out_of_stock");
    assert_eq!(order.body["out_of_stock_skus"], json!(["rare"]));
    // The answer names the deciding event: the cancellation, the order's fourth event.
    let stream = service.get("/admin/streams/order/o2").await.body;
    let cancelled = stream.as_array().unwrap().iter().find(|e| e["type"] == "OrderCancelled");
    assert_eq!(
        cancelled.map(|e| (&e["position"], &e["version"])),
        Some((&json!(answer.position()), &json!(4)))
    );
    assert_eq!(answer.header("etag"), Some("\"4\""));

    // The lines that were reserved were given back before the order was cancelled, so the
    // stock is exactly as before: nothing reserved, everything available.
    assert_eq!(product(&service, "tea").await, (100, 0, 100));
    assert_eq!(product(&service, "cake").await, (100, 0, 100));
    assert_eq!(product(&service, "rare").await, (1, 0, 1));
    let saga = service.saga_reaches("o2", "failed").await;
    assert_eq!((&saga["state"], &saga["reserved"]), (&json!("cancelled"), &json!([])));
    assert_eq!(saga["deadline"], Value::Null);
    let commands: Vec<&str> =
        saga["history"].as_array().unwrap().iter().filter_map(|s| s["command"].as_str()).collect();
    assert!(commands.contains(&"CancelForShortage rare"), "{commands:?}");

    let counts = service.get("/admin/sagas").await;
    assert_eq!(
        counts.body,
        json!([{"name": "fulfilment", "active": 1, "completed": 0, "failed": 1, "parked": 0}]),
        "o1 is placed (active), o2 failed"
    );
    service.get("/admin/sagas/fulfilment/nobody").await.expect_problem(404, "no instance");
    service.get("/admin/sagas/nothing/o1").await.expect_problem(404, "no saga");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_confirmed_order_releases_its_stock_and_shipping_consumes_it() {
    let service = Service::start().await;
    service.seed().await;
    service
        .post(
            "/orders",
            json!({"order_id": "o2", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 5}]}),
        )
        .await;
    for id in ["o1", "o2"] {
        let confirmed = service.post(&format!("/orders/{id}/confirm"), json!({})).await;
        assert_eq!(confirmed.body["status"], "confirmed", "{}", confirmed.body);
    }
    assert_eq!(product(&service, "tea").await, (100, 7, 93));
    service.post("/orders/o1/cancel", json!({"reason": "changed my mind"})).await;
    service.post("/orders/o2/ship", json!({})).await;
    service.saga_reaches("o1", "completed").await;
    service.saga_reaches("o2", "completed").await;
    assert_eq!(product(&service, "tea").await, (95, 0, 95));
}

fn client(service: Arc<Service>) -> impl Fn(String, Option<Value>) -> oversell::Answer + Clone {
    let service = service.clone();
    move |path, body| {
        let service = service.clone();
        Box::pin(async move {
            let answer = match body {
                Some(body) => service.post(&path, body).await,
                None => service.get(&path).await,
            };
            (answer.status.as_u16(), answer.body)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_orders_never_oversell() {
    let service = Arc::new(Service::start().await);
    let send = client(service.clone());
    oversell::setup(&send).await;
    let orders = oversell::run(1000, 64, send.clone()).await;
    service.settled().await;
    let summary = oversell::check(&orders, &send).await;
    eprintln!("oversell, one SQLite node: {summary}");
}

/// The oversell check, for one node in-process and for three real nodes.
pub mod oversell {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;

    /// An HTTP answer: status and JSON body.
    pub type Answer = Pin<Box<dyn Future<Output = (u16, Value)> + Send>>;

    /// Products and how many units each has: far fewer than the orders ask for.
    pub const STOCK: [(&str, i64); 3] = [("red", 300), ("green", 200), ("blue", 100)];

    /// A customer and the products, sent with `send` (a body makes a `POST`).
    pub async fn setup<F: Fn(String, Option<Value>) -> Answer>(send: &F) {
        let customer = json!({"customer_id": "ada", "name": "Ada", "email": "ada@example.com"});
        assert_eq!(send("/customers".into(), Some(customer)).await.0, 201);
        for (sku, qty) in STOCK {
            let product = json!({"sku": sku, "name": sku, "price_cents": 100});
            assert_eq!(send("/products".into(), Some(product)).await.0, 201);
            let restock = Some(json!({"qty": qty}));
            assert_eq!(send(format!("/products/{sku}/restock"), restock).await.0, 200);
        }
    }

    /// One placed order: its id and units by sku.
    pub type Placed = (String, BTreeMap<String, i64>);

    /// Places and confirms `orders` random orders from `clients` clients at once; of the
    /// confirmed, about a tenth are cancelled and a fifth shipped.
    pub async fn run<F>(orders: usize, clients: usize, send: F) -> Vec<Placed>
    where
        F: Fn(String, Option<Value>) -> Answer + Clone + Send + 'static,
    {
        let mut tasks = Vec::new();
        for client in 0..clients {
            let send = send.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client as u64);
                let mut placed = Vec::new();
                for n in (client..orders).step_by(clients) {
                    let id = format!("x{n}");
                    let mut lines: BTreeMap<String, i64> = BTreeMap::new();
                    for _ in 0..rng.usize(1..=3) {
                        let (sku, _) = STOCK[rng.usize(..STOCK.len())];
                        *lines.entry(sku.to_owned()).or_default() += rng.i64(1..=4);
                    }
                    let body: Vec<Value> =
                        lines.iter().map(|(sku, qty)| json!({"sku": sku, "qty": qty})).collect();
                    let order = json!({"order_id": id, "customer_id": "ada", "lines": body});
                    let (status, answer) = send("/orders".into(), Some(order)).await;
                    assert_eq!(status, 201, "{answer}");
                    let confirm = format!("/orders/{id}/confirm?wait_ms=30000");
                    let (status, answer) = send(confirm, Some(json!({}))).await;
                    assert_eq!(status, 200, "{answer}");
                    if answer["status"] == "confirmed" {
                        let then = match rng.u8(..10) {
                            0 => Some(("cancel", json!({"reason": "changed my mind"}))),
                            1 | 2 => Some(("ship", json!({}))),
                            _ => None,
                        };
                        if let Some((action, body)) = then {
                            let (status, answer) =
                                send(format!("/orders/{id}/{action}"), Some(body)).await;
                            assert_eq!(status, 200, "{action} {id}: {answer}");
                        }
                    }
                    placed.push((id, lines));
                }
                placed
            }));
        }
        let mut placed = Vec::new();
        for task in tasks {
            placed.extend(task.await.unwrap());
        }
        placed
    }

    /// Checks, once every projection and saga has caught up: every order is confirmed,
    /// cancelled or shipped; each product's stock is what was restocked less what shipped,
    /// never below zero; its reservations are exactly the confirmed orders' units. Returns
    /// a summary.
    pub async fn check<F: Fn(String, Option<Value>) -> Answer>(
        placed: &[Placed],
        send: &F,
    ) -> String {
        let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
        let mut shipped: BTreeMap<String, i64> = BTreeMap::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (id, lines) in placed {
            let (status, order) = send(format!("/orders/{id}"), None).await;
            assert_eq!(status, 200, "{order}");
            let state = order["status"].as_str().unwrap().to_owned();
            let into = match state.as_str() {
                "confirmed" => Some(&mut reserved),
                "shipped" => Some(&mut shipped),
                "cancelled" => None,
                other => panic!("order {id} is {other}: every order is decided"),
            };
            if let Some(into) = into {
                for (sku, qty) in lines {
                    *into.entry(sku.clone()).or_default() += qty;
                }
            }
            let key = match order["cancel_reason"].as_str() {
                Some(reason) => format!("cancelled ({reason})"),
                None => state,
            };
            *counts.entry(key).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), placed.len(), "confirmed + cancelled = all");
        for (sku, stock) in STOCK {
            let (status, product) = send(format!("/products/{sku}"), None).await;
            assert_eq!(status, 200);
            let field = |name: &str| product[name].as_i64().unwrap();
            let (on_hand, held, available) =
                (field("on_hand"), field("reserved"), field("available"));
            let sold = shipped.get(sku).copied().unwrap_or(0);
            assert_eq!(on_hand, stock - sold, "{sku}: what shipped left the stock");
            assert!(on_hand >= 0 && available >= 0, "{sku} oversold: {product}");
            assert_eq!(
                held,
                reserved.get(sku).copied().unwrap_or(0),
                "{sku}: reserved = confirmed units"
            );
            assert_eq!(available, on_hand - held, "{sku}");
        }
        assert!(
            counts.get("cancelled (out_of_stock)").is_some_and(|n| *n > 0),
            "stock ran out: {counts:?}"
        );
        format!("{counts:?}")
    }
}

async fn order_until(service: &Service, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let order = service.view(&format!("/orders/{id}")).await.body;
        if done(&order) {
            return order;
        }
        assert!(tokio::time::Instant::now() < deadline, "order {id} stays {order}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_left_placed_expires_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = settings(Duration::from_secs(2), Duration::from_secs(60));
    let service = Service::start_in_path_with(dir.path(), ttl).await;
    service.seed().await;
    let saga = service.saga_reaches("o1", "active").await;
    assert!(saga["deadline"].is_string(), "{saga}");
    // Stopped before the order's time is up: the deadline is kept with the saga.
    service.stop_and_wait().await;

    let service = Service::start_in_path_with(dir.path(), ttl).await;
    let order = order_until(&service, "o1", |o| o["status"] == "cancelled").await;
    assert_eq!(order["cancel_reason"], "expired");
    let saga = service.saga_reaches("o1", "failed").await;
    assert_eq!(saga["deadline"], Value::Null);
    // Sent once: a second send would be counted, though it could not expire the order again.
    assert_eq!(expiries_sent(&service), 1);
    service.stop_and_wait().await;

    let service = Service::start_in_path_with(dir.path(), ttl).await;
    service.settled().await;
    assert_eq!(stream_types(&service, "order/o1").await, ["OrderPlaced", "OrderCancelled"]);
    let saga = service.get("/admin/sagas/fulfilment/o1").await.body;
    assert_eq!(saga["deadline"], Value::Null, "nothing is left to fire");
    assert_eq!(expiries_sent(&service), 0);
}

/// How many `Expire` commands this service's bus handled.
fn expiries_sent(service: &Service) -> u64 {
    let counts = service.app.bus.counts().snapshot();
    counts.iter().filter(|((_, command, _), _)| *command == "Expire").map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_confirmation_times_out_and_gives_its_stock_back() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = settings(Duration::from_secs(3600), Duration::from_secs(1));
    let service = Service::start_in_path_with(dir.path(), timeout).await;
    service.seed().await;
    service.settled().await;
    service.stop_and_wait().await;
    // While no saga runs: o1 asks to confirm, then comes an event the saga cannot read,
    // about o1. The saga decides on the request (reserving the tea and setting the timeout)
    // and parks at the unreadable event; everything after it about o1 waits.
    {
        let store = strata_sqlite::SqliteEventStore::open(dir.path()).unwrap();
        let requested = orders::domain::OrdersEvent::Order(
            orders::domain::OrderEvent::OrderConfirmationRequested(
                orders::domain::order::OrderStatusChanged { customer_id: "ada".into() },
            ),
        );
        let requested = requested.to_new_event(EventMetadata::new("stuck", None)).unwrap();
        let order = StreamId::new("order", "o1");
        store
            .append(&order, ExpectedVersion::Exact(strata::Version(1)), vec![requested])
            .await
            .unwrap();
        let unreadable = NewEvent {
            event_type: "StockReserved".into(),
            schema_version: 1,
            payload: br#"{"order_id":"o1","qty":"many"}"#.to_vec(),
            metadata: EventMetadata::new("stuck", None),
        };
        store
            .append(&StreamId::new("product", "junk"), ExpectedVersion::Any, vec![unreadable])
            .await
            .unwrap();
    }

    let service = Service::start_in_path_with(dir.path(), timeout).await;
    let order = order_until(&service, "o1", |o| o["status"] == "cancelled").await;
    assert_eq!(order["cancel_reason"], "timeout");
    let parked = service.get("/admin/sagas").await.body;
    assert_eq!(parked[0]["parked"], 1, "{parked}");
    // The saga is parked and cannot release; the timeout gives the tea back itself, right
    // after cancelling.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while product(&service, "tea").await != (100, 0, 100) {
        assert!(tokio::time::Instant::now() < deadline, "the tea stays reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let skipped = service
        .post("/admin/projections/fulfilment/parked/o1/skip", json!({"reason": "junk"}))
        .await;
    assert_eq!(skipped.status, StatusCode::OK, "{}", skipped.body);
    service.saga_reaches("o1", "failed").await;
    assert_eq!(product(&service, "tea").await, (100, 0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_views_or_the_saga_itself_sends_nothing() {
    let service = Service::start().await;
    service.seed().await;
    assert_eq!(service.post("/orders/o1/confirm", json!({})).await.body["status"], "confirmed");
    service.post("/orders/o1/ship", json!({})).await;
    let before = service.saga_reaches("o1", "completed").await;
    service.settled().await;
    // Long after: the commands' idempotency keys are forgotten, so only not sending at all
    // keeps a rebuilt saga from acting again.
    let later = chrono::Utc::now() + chrono::Duration::days(30);
    let forgotten = service.app.events().expire(later, 10_000).await.unwrap();
    assert!(forgotten >= 3, "the saga's keys existed: {forgotten}");
    let head = service.head();
    for name in ["orders", "products", "fulfilment"] {
        let asked = service.post(&format!("/admin/projections/{name}/rebuild"), json!({})).await;
        assert_eq!(asked.status, StatusCode::ACCEPTED);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = service.get("/admin/projections").await.body;
        if statuses.as_array().unwrap().iter().all(|s| s["rebuild"].is_null()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rebuilds never ended: {statuses}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.settled().await;
    assert_eq!(service.head(), head, "the rebuilt saga decided again and sent nothing");
    let after = service.get("/admin/sagas/fulfilment/o1").await.body;
    assert_eq!(after, before);
    assert_eq!(product(&service, "tea").await, (98, 0, 98));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_confirmed_while_the_saga_rebuilds_are_all_decided() {
    let service = Arc::new(Service::start().await);
    service.seed().await;
    service.post("/products/tea/restock", json!({"qty": 100_000})).await;
    for n in 0..300 {
        let order = json!({"order_id": format!("pre{n}"), "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
        service.post("/orders", order).await;
    }
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..12 {
                    let id = format!("c{client}-{n}");
                    let order = json!({"order_id": id, "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
                    service.post("/orders", order).await;
                    let path = format!("/orders/{id}/confirm?wait_ms=10000");
                    answers.push(service.post(&path, json!({})).await);
                }
                answers
            })
        })
        .collect();
    // Rebuilt while the clients confirm: the rebuild sends nothing, so it must not be
    // swapped in past events live has not acted on.
    for _ in 0..3 {
        let asked = service.post("/admin/projections/fulfilment/rebuild", json!({})).await;
        assert!(asked.status == StatusCode::ACCEPTED || asked.status == StatusCode::CONFLICT);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for client in clients {
        for answer in client.await.unwrap() {
            assert_eq!(
                (answer.status, &answer.body["status"]),
                (StatusCode::OK, &json!("confirmed")),
                "{}",
                answer.body
            );
        }
    }
}

/// Views in memory whose commits fail when told to: the saga has sent its commands and
/// then cannot save its state, as if it had crashed right there.
type CrashingViews = strata_testkit::DyingViews<strata::InMemoryViewManager>;

struct CrashingBackend;

impl orders::app::Backend for CrashingBackend {
    type Events = strata::InMemoryEventStore;
    type Views = CrashingViews;
    type Leases = strata::LocalLeases;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_reserving_and_saving_the_saga_reserves_once() {
    use orders::app::{App, LineRequest, PlaceOrder, Stores};

    let stores: Stores<CrashingBackend> = Stores {
        events: Arc::new(strata::InMemoryEventStore::new()),
        views: Arc::new(CrashingViews::new(Arc::new(strata::InMemoryViewManager::new()))),
        leases: Arc::new(strata::LocalLeases),
    };
    let views = stores.views.clone();
    let app = App::start(stores, "crashing", strata::BusConfig::default()).await.unwrap();
    let context = strata::CommandContext::new("crash");
    app.register_customer("ada", "Ada".into(), "ada@example.com".into(), &context).await.unwrap();
    for sku in ["tea", "cake"] {
        app.create_product(sku, sku.into(), 100, &context).await.unwrap();
        app.restock_product(sku, 10, &context).await.unwrap();
    }
    let lines = ["tea", "cake"].map(|sku| LineRequest { sku: sku.into(), qty: 2 }).to_vec();
    let order = PlaceOrder {
        customer_id: "ada".into(),
        lines,
        payment_method: None,
        shipping_address: None,
    };
    app.place_order("o1", order, &context).await.unwrap();
    let saga = app.projection("fulfilment").unwrap();
    saga.wait_for(app.events().head(), Duration::from_secs(10)).await.unwrap();

    // The batch that reserves fails to save twice; each retry sends the reservations again.
    views.fail_next("fulfilment", 2);
    let (_, decided) = app.confirm_order("o1", &context, Duration::from_secs(10)).await.unwrap();
    let decided = decided.expect("the saga confirms o1");
    assert_eq!(decided.status, orders::domain::OrderStatus::Confirmed);
    // The confirmation may be sent by a pass whose save then fails; wait for the saga to
    // have saved everything.
    let head = app.events().head();
    saga.wait_for(head, Duration::from_secs(10)).await.unwrap();
    assert_eq!(views.failures_left(), 0, "the saga crashed twice");
    for sku in ["tea", "cake"] {
        let stream = app
            .events()
            .read_stream(&StreamId::new("product", sku), strata::Version::NONE)
            .await
            .unwrap();
        let reserved = stream.iter().filter(|e| e.event_type == "StockReserved").count();
        assert_eq!(reserved, 1, "{sku} was reserved once");
        let product = app.bus.load::<orders::domain::Product>(sku).await.unwrap().state;
        assert_eq!((product.reserved(), product.available()), (2, 8), "{sku}");
    }
    app.stop();
}

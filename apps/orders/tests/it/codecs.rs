//! Payload codecs: every event of the reference domain round-trips through JSON and binary;
//! a store written with both reads back, serves the same views, and exports and imports
//! with each payload's codec kept.

use orders::domain::customer::CustomerRegistered;
use orders::domain::order::{
    LineAdded, LineUnavailable, OrderCancelled, OrderPlaced, OrderStatusChanged,
};
use orders::domain::product::{ProductCreated, ProductRestocked, StockMoved};
use orders::domain::{CustomerEvent, OrderEvent, OrderLine, OrdersEvent, ProductEvent};
use proptest::prelude::*;
use serde_json::{Value, json};
use strata::{
    Codec, DomainEvent, EventMetadata, EventStore, Position, RecordedEvent, StreamId, Version,
};
use strata_sqlite::SqliteEventStore;

use crate::process::Server;
use crate::support::Service;

fn line() -> impl Strategy<Value = OrderLine> {
    (".*", any::<i64>(), any::<i64>()).prop_map(|(sku, qty, price_cents)| OrderLine {
        sku,
        qty,
        price_cents,
    })
}

fn any_event() -> impl Strategy<Value = (StreamId, OrdersEvent)> {
    let customer = ".*";
    prop_oneof![
        (".*", ".*").prop_map(|(name, email)| (
            StreamId::new("customer", "c"),
            OrdersEvent::Customer(CustomerEvent::CustomerRegistered(CustomerRegistered {
                name,
                email
            }))
        )),
        (".*", any::<i64>()).prop_map(|(name, price_cents)| (
            StreamId::new("product", "p"),
            OrdersEvent::Product(ProductEvent::ProductCreated(ProductCreated {
                name,
                price_cents
            }))
        )),
        any::<i64>().prop_map(|qty| (
            StreamId::new("product", "p"),
            OrdersEvent::Product(ProductEvent::ProductRestocked(ProductRestocked { qty }))
        )),
        (customer, prop::collection::vec(line(), 0..4), ".*", proptest::option::of(".*")).prop_map(
            |(customer_id, lines, payment_method, shipping_address)| (
                StreamId::new("order", "o"),
                OrdersEvent::Order(OrderEvent::OrderPlaced(OrderPlaced {
                    customer_id,
                    lines,
                    payment_method,
                    shipping_address
                }))
            )
        ),
        (customer, line()).prop_map(|(customer_id, line)| (
            StreamId::new("order", "o"),
            OrdersEvent::Order(OrderEvent::LineAdded(LineAdded { customer_id, line }))
        )),
        customer.prop_map(|customer_id| (
            StreamId::new("order", "o"),
            OrdersEvent::Order(OrderEvent::OrderConfirmed(OrderStatusChanged { customer_id }))
        )),
        customer.prop_map(|customer_id| (
            StreamId::new("order", "o"),
            OrdersEvent::Order(OrderEvent::OrderShipped(OrderStatusChanged { customer_id }))
        )),
        (customer, ".*", prop::collection::vec(".*", 0..3)).prop_map(
            |(customer_id, reason, out_of_stock_skus)| (
                StreamId::new("order", "o"),
                OrdersEvent::Order(OrderEvent::OrderCancelled(OrderCancelled {
                    customer_id,
                    reason,
                    out_of_stock_skus
                }))
            )
        ),
        customer.prop_map(|customer_id| (
            StreamId::new("order", "o"),
            OrdersEvent::Order(OrderEvent::OrderConfirmationRequested(OrderStatusChanged {
                customer_id
            }))
        )),
        (customer, ".*").prop_map(|(customer_id, sku)| (
            StreamId::new("order", "o"),
            OrdersEvent::Order(OrderEvent::LineUnavailable(LineUnavailable { customer_id, sku }))
        )),
        (".*", any::<i64>(), 0..3_u8).prop_map(|(order_id, qty, kind)| {
            let moved = StockMoved { order_id, qty };
            let event = match kind {
                0 => ProductEvent::StockReserved(moved),
                1 => ProductEvent::StockReleased(moved),
                _ => ProductEvent::ReservedStockShipped(moved),
            };
            (StreamId::new("product", "p"), OrdersEvent::Product(event))
        }),
    ]
}

proptest! {
    #[test]
    fn every_event_round_trips_through_both_codecs((stream, event) in any_event()) {
        for codec in [Codec::Json, Codec::Binary] {
            let payload = event.encode(codec).unwrap();
            prop_assert_eq!(Codec::of(&payload), codec);
            let record = RecordedEvent {
                stream: stream.clone(),
                version: Version(1),
                position: Position(1),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload,
                metadata: EventMetadata::new("codecs", None),
            };
            prop_assert_eq!(&OrdersEvent::decode(&record).unwrap(), &event);
        }
    }
}

fn export(dir: &std::path::Path) -> Vec<Value> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "export", "--data-dir", dir.to_str().unwrap()])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_with_both_codecs_reads_back_and_moves_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    // First with JSON, as every store before codecs.
    let service = Service::start_in_path(dir.path()).await;
    service.seed().await;
    service.stop_and_wait().await;

    // Then with binary payloads, on the same store.
    let server =
        Server::spawn(&["--node-id", "binary", "--data-dir", &path, "--event-codec", "binary"]);
    let (status, _) =
        server.send("POST", "/orders/o1/lines", Some(json!({"sku": "cake", "qty": 2}))).await;
    assert_eq!(status, 200);
    let place =
        json!({"order_id": "o2", "customer_id": "ada", "lines": [{"sku": "cake", "qty": 1}]});
    assert_eq!(server.send("POST", "/orders", Some(place)).await.0, 201);
    let (_, projections) = server.send("GET", "/admin/projections", None).await;
    let head = projections[0]["head"].as_u64().unwrap();
    let (status, o1) =
        server.send("GET", &format!("/orders/o1?min_position={head}&wait_ms=10000"), None).await;
    assert_eq!(status, 200);
    let (_, stream) = server.send("GET", "/admin/streams/order/o2", None).await;
    assert_eq!(stream[0]["data"]["customer_id"], "ada", "binary payloads are shown as JSON");
    server.kill_9();

    let store = SqliteEventStore::open(dir.path()).unwrap();
    let events = store.read_all(Position::START, usize::MAX).await.unwrap();
    let codecs: std::collections::BTreeSet<_> =
        events.iter().map(|e| Codec::of(&e.payload).to_string()).collect();
    assert_eq!(
        codecs.into_iter().collect::<Vec<_>>(),
        ["binary", "json"],
        "both codecs in one store"
    );
    for event in &events {
        OrdersEvent::decode(event).unwrap_or_else(|e| panic!("{}: {e}", event.position));
    }
    drop(store);

    // A JSON node rebuilding every view from the mixed log (views.sqlite deleted, as the
    // README says) serves what the binary node served.
    for file in ["views.sqlite", "views.sqlite-wal", "views.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let service = Service::start_in_path(dir.path()).await;
    let again = service.get(&format!("/orders/o1?min_position={head}&wait_ms=10000")).await;
    assert_eq!(again.body, o1);
    service.stop_and_wait().await;

    // Export shows every payload as a JSON object and names the binary ones; an import
    // stores each with its codec, so exporting again gives the same lines.
    let exported = export(dir.path());
    assert!(exported.iter().all(|line| line["data"].is_object()));
    assert!(exported.iter().any(|line| line["codec"] == "binary"));
    assert!(exported.iter().all(|line| line["codec"] == "binary" || line.get("codec").is_none()));
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("events.jsonl");
    let text: Vec<String> = exported.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let target = copy.path().join("store");
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "import", "--data-dir", target.to_str().unwrap(), file.to_str().unwrap()])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    assert_eq!(export(&target), exported);
}

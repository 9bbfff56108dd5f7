//! Events that live for years. `tests/golden/events.jsonl` holds, as `strata events export`
//! writes them, events of every type at every schema version the service has ever written
//! (`OrderPlaced` version 1 in both of its shapes: without a payment method and address, and
//! with them as optional fields), in each payload codec. Lines are only ever added: a new schema version gets a line
//! of its own, and the file stays importable (positions increase, stream versions follow).
//!
//! Each line still loads; the file covers every version `SCHEMAS` declares; a version 1
//! `OrderPlaced` is imported, served as version 2 by every view and decided on by the
//! command side, while the log and its export keep it as stored; and `strata serve` refuses
//! a store holding a version it cannot read.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use orders::domain::{OrderEvent, OrdersEvent, SCHEMAS};
use serde_json::{Value, json};
use strata::{
    Codec, DomainEvent, EventMetadata, EventStore, ExpectedVersion, NewEvent, Position,
    RecordedEvent, StreamId, Version,
};
use strata_sqlite::SqliteEventStore;

use orders::sagas::FulfilmentSettings;

use crate::support::Service;

fn golden_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events.jsonl")
}

fn golden() -> Vec<(Value, RecordedEvent)> {
    let text = std::fs::read_to_string(golden_file()).unwrap();
    text.lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            let metadata = &line["metadata"];
            let recorded_at: DateTime<Utc> =
                metadata["recorded_at"].as_str().unwrap().parse().unwrap();
            let record = RecordedEvent {
                stream: StreamId::new(
                    line["aggregate_type"].as_str().unwrap(),
                    line["aggregate_id"].as_str().unwrap(),
                ),
                version: Version(line["version"].as_u64().unwrap()),
                position: Position(line["position"].as_u64().unwrap()),
                event_type: line["type"].as_str().unwrap().to_owned(),
                schema_version: u32::try_from(line["schema_version"].as_u64().unwrap()).unwrap(),
                payload: match line["codec"].as_str() {
                    Some("binary") => Codec::Binary.encode(&line["data"]).unwrap(),
                    _ => serde_json::to_vec(&line["data"]).unwrap(),
                },
                metadata: EventMetadata {
                    event_id: metadata["event_id"].as_str().unwrap().parse().unwrap(),
                    correlation_id: "golden".to_owned(),
                    causation_id: None,
                    user: None,
                    recorded_at,
                },
            };
            (line, record)
        })
        .collect()
}

#[test]
fn every_schema_version_ever_written_still_loads() {
    let mut covered = BTreeSet::new();
    for (line, record) in golden() {
        let event = OrdersEvent::decode(&record)
            .unwrap_or_else(|error| panic!("golden event {line} no longer loads: {error}"));
        covered.insert((record.event_type.clone(), record.schema_version));
        if let OrdersEvent::Order(OrderEvent::OrderPlaced(placed)) = event {
            let stored = &line["data"];
            let expected = stored["payment_method"].as_str().unwrap_or("unknown");
            assert_eq!(placed.payment_method, expected, "{line}");
            assert_eq!(placed.shipping_address.as_deref(), stored["shipping_address"].as_str());
        }
    }
    for (event_type, current) in SCHEMAS.types {
        for version in 1..=*current {
            assert!(
                covered.contains(&((*event_type).to_owned(), version)),
                "{event_type} version {version} has no golden event: add one to {}",
                golden_file().display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_order_placed_is_served_as_version_2_and_kept_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "import", "--data-dir", &store, golden_file().to_str().unwrap()])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));

    // Orders placed in 2024 would expire at once under the default TTL.
    let patient = FulfilmentSettings {
        order_ttl: std::time::Duration::from_secs(3650 * 86_400),
        ..FulfilmentSettings::default()
    };
    let service = Service::start_in_path_with(dir.path(), patient).await;
    let head = service.head();
    for (id, payment_method, address, status) in [
        ("o1", json!("unknown"), Value::Null, "shipped"),
        ("o2", json!("card"), json!("1 Main St"), "cancelled"),
        ("o3", json!("card"), Value::Null, "placed"),
        ("o4", json!("unknown"), Value::Null, "placed"),
        ("o6", json!("card"), Value::Null, "shipped"),
        ("o7", json!("card"), Value::Null, "cancelled"),
        ("o8", json!("card"), Value::Null, "cancelled"),
    ] {
        let order = service.get(&format!("/orders/{id}?min_position={head}&wait_ms=10000")).await;
        assert_eq!(order.body["payment_method"], payment_method, "{id}: {}", order.body);
        assert_eq!(order.body["shipping_address"], address, "{id}");
        assert_eq!(order.body["status"], status, "{id}");
    }
    let listed =
        service.get(&format!("/customers/ada/orders?min_position={head}&wait_ms=10000")).await;
    let listed = listed.body["orders"].as_array().unwrap().clone();
    assert!(listed.iter().all(|order| order["payment_method"].is_string()), "{listed:?}");

    let short = service.get(&format!("/orders/o8?min_position={head}")).await;
    assert_eq!(short.body["cancel_reason"], "out_of_stock");
    assert_eq!(short.body["out_of_stock_skus"], json!(["tea"]));
    // Reservations of the imported history are settled: 100 restocked, 1 shipped.
    let tea = service.get(&format!("/products/tea?min_position={head}")).await;
    assert_eq!((&tea.body["on_hand"], &tea.body["reserved"]), (&json!(99), &json!(0)));

    // The command side decides on the upcast event: o4 was placed by version 1. The saga,
    // which acts only on what follows the imported history, reserves its 3 units.
    let confirmed = service.post("/orders/o4/confirm", json!({})).await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["status"], "confirmed", "{:?}", confirmed.body);
    let tea = service.get(&format!("/products/tea?min_position={}", service.head())).await;
    assert_eq!((&tea.body["reserved"], &tea.body["available"]), (&json!(3), &json!(96)));

    // The log keeps what was stored.
    let stream = service.get("/admin/streams/order/o1").await;
    assert_eq!(stream.body[0]["schema_version"], 1);
    assert_eq!(
        stream.body[0]["data"],
        json!({"customer_id": "ada", "lines": [{"sku": "tea", "qty": 2, "price_cents": 450}]})
    );
    service.stop_and_wait().await;
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "export", "--data-dir", &store])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let exported: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let golden_lines: Vec<Value> = golden().into_iter().map(|(line, _)| line).collect();
    assert_eq!(&exported[..golden_lines.len()], &golden_lines[..], "exported as stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_store_holding_versions_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteEventStore::open(dir.path()).unwrap();
        let event = |event_type: &str, schema_version| NewEvent {
            event_type: event_type.to_owned(),
            schema_version,
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new("future", None),
        };
        let events = vec![event("OrderPlaced", 3), event("OrderTeleported", 1)];
        store
            .append(&StreamId::new("order", "o9"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .env_remove("STRATA_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("OrderPlaced schema version 3 is newer than this code's version 2"),
        "{stderr}"
    );
    assert!(stderr.contains("\"OrderTeleported\" is unknown"), "{stderr}");
}

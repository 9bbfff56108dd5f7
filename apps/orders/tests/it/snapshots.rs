//! Order snapshots: a snapshot plus the events after it gives the state a full replay gives,
//! for any history; a long stream loads from its snapshot; a snapshot of another format, or
//! one that does not decode, is ignored and the stream replayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orders::domain::order::{LineAdded, OrderCancelled, OrderPlaced, OrderStatusChanged};
use orders::domain::{Order, OrderCommand, OrderEvent, OrderLine};
use proptest::prelude::*;
use strata::{
    Aggregate, BusConfig, CommandBus, CommandContext, EventStore, InMemoryEventStore, Snapshot,
    StreamId, Version,
};

fn event(kind: u8, n: i64) -> OrderEvent {
    let customer_id = format!("c{}", n % 3);
    let line = OrderLine { sku: format!("s{n}"), qty: n, price_cents: 100 };
    match kind % 5 {
        0 => OrderEvent::OrderPlaced(OrderPlaced {
            customer_id,
            lines: vec![line],
            payment_method: "card".into(),
            shipping_address: None,
        }),
        1 => OrderEvent::LineAdded(LineAdded { customer_id, line }),
        2 => OrderEvent::OrderConfirmed(OrderStatusChanged { customer_id }),
        3 => OrderEvent::OrderShipped(OrderStatusChanged { customer_id }),
        _ => OrderEvent::OrderCancelled(OrderCancelled {
            customer_id,
            reason: "r".into(),
            out_of_stock_skus: Vec::new(),
        }),
    }
}

fn fold(events: &[OrderEvent], mut state: Order) -> Order {
    for event in events {
        state.apply(event);
    }
    state
}

proptest! {
    #[test]
    fn a_snapshot_plus_the_tail_equals_a_full_replay(
        history in prop::collection::vec((any::<u8>(), 1..1000_i64), 0..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let events: Vec<OrderEvent> = history.iter().map(|&(kind, n)| event(kind, n)).collect();
        let cut = cut.index(events.len() + 1);
        let snapshot = fold(&events[..cut], Order::default()).to_snapshot().unwrap();
        let restored = Order::from_snapshot(&snapshot).unwrap();
        prop_assert_eq!(fold(&events[cut..], restored), fold(&events, Order::default()));
    }
}

fn line(n: i64) -> OrderCommand {
    OrderCommand::AddLine(OrderLine { sku: "tea".into(), qty: n, price_cents: 450 })
}

async fn snapshot_at(store: &InMemoryEventStore, stream: &StreamId, version: u64) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(snapshot) = store.read_snapshot(stream).await.unwrap()
            && snapshot.version >= Version(version)
        {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "no snapshot at version {version} was written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_long_stream_loads_from_its_snapshot_and_ignores_one_it_cannot_read() {
    let store = Arc::new(InMemoryEventStore::new());
    let context = CommandContext::new("snapshots");
    let bus = CommandBus::new(store.clone(), BusConfig::default());
    let place = OrderCommand::Place {
        customer_id: "ada".into(),
        lines: vec![],
        payment_method: None,
        shipping_address: None,
    };
    bus.execute::<Order>("o1", place, &context).await.unwrap();
    for n in 1..250 {
        bus.execute::<Order>("o1", line(n), &context).await.unwrap();
    }
    let stream = StreamId::new("order", "o1");
    let written = snapshot_at(&store, &stream, 200).await;
    assert_eq!(written.version, Version(200), "written when the stream passed 200 events");
    assert_eq!(Order::from_snapshot(&written.state).unwrap().customer_id, "ada");

    // A fresh bus, as after a restart, believes a snapshot of the current format: one that
    // says "shipped" makes it refuse the next line (so the snapshot, not a replay, was used).
    let shipped =
        Order { status: Some(orders::domain::OrderStatus::Shipped), customer_id: "ada".into() };
    let lying =
        Snapshot { version: Version(250), format: 1, state: shipped.to_snapshot().unwrap() };
    store.write_snapshot(&stream, &lying).await.unwrap();
    let restarted = CommandBus::new(store.clone(), BusConfig::default());
    let refused = restarted.execute::<Order>("o1", line(1), &context).await;
    assert!(refused.is_err(), "the snapshot was read: {refused:?}");

    // Another format, or bytes that do not decode: ignored, and the stream replayed in full.
    for unreadable in [
        Snapshot { version: Version(260), format: 0, state: shipped.to_snapshot().unwrap() },
        Snapshot { version: Version(270), format: 1, state: b"not json".to_vec() },
    ] {
        store.write_snapshot(&stream, &unreadable).await.unwrap();
        let restarted = CommandBus::new(store.clone(), BusConfig::default());
        let outcome = restarted.execute::<Order>("o1", line(1), &context).await.unwrap();
        assert!(outcome.version > Version(250), "replayed and appended: {outcome:?}");
    }
}

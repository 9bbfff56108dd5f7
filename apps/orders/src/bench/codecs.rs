//! `strata bench --codecs`: each payload codec on the events of workload W1 (an order placed
//! with one line, then nine lines added, beside customers and products): bytes per payload,
//! and the cost to encode one and to decode one back into the domain's event.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Context;
use strata::{Codec, DomainEvent, EventMetadata, Position, RecordedEvent, StreamId, Version};

use crate::domain::customer::CustomerRegistered;
use crate::domain::order::{LineAdded, OrderPlaced};
use crate::domain::product::ProductRestocked;
use crate::domain::{CustomerEvent, OrderEvent, OrderLine, OrdersEvent, ProductEvent};

/// One codec's figures.
pub struct CodecFigures {
    pub codec: Codec,
    pub bytes_per_event: f64,
    pub encode_ns: f64,
    pub decode_ns: f64,
}

/// The events of W1, in its proportions: per order one placement and nine lines, and now
/// and then a customer or a restock.
fn workload(events: usize) -> Vec<(StreamId, OrdersEvent)> {
    (0..events)
        .map(|n| {
            let order = format!("order-{:08}", n / 10);
            let customer_id = format!("customer-{:05}", n % 997);
            let line = OrderLine {
                sku: format!("sku-{:03}", n % 100),
                qty: 1 + (n % 5) as i64,
                price_cents: 450,
            };
            match n % 10 {
                0 => (
                    StreamId::new("order", order),
                    OrdersEvent::Order(OrderEvent::OrderPlaced(OrderPlaced {
                        customer_id,
                        lines: vec![line],
                        payment_method: "card".into(),
                        shipping_address: None,
                    })),
                ),
                _ if n % 97 == 0 => (
                    StreamId::new("customer", customer_id),
                    OrdersEvent::Customer(CustomerEvent::CustomerRegistered(CustomerRegistered {
                        name: "Ada Lovelace".into(),
                        email: "ada@example.com".into(),
                    })),
                ),
                _ if n % 89 == 0 => (
                    StreamId::new("product", "sku-001"),
                    OrdersEvent::Product(ProductEvent::ProductRestocked(ProductRestocked {
                        qty: 10,
                    })),
                ),
                _ => (
                    StreamId::new("order", order),
                    OrdersEvent::Order(OrderEvent::LineAdded(LineAdded { customer_id, line })),
                ),
            }
        })
        .collect()
}

/// Measures every codec on `events` events.
pub fn run(events: usize) -> anyhow::Result<Vec<CodecFigures>> {
    let workload = workload(events.max(1));
    let metadata = EventMetadata::new("bench-codecs", None);
    let mut figures = Vec::new();
    for codec in [Codec::Json, Codec::Binary] {
        eprintln!("bench: {codec}: encoding and decoding {} events", workload.len());
        let started = Instant::now();
        let mut encoded = Vec::with_capacity(workload.len());
        for (_, event) in &workload {
            encoded.push(black_box(event.encode(codec).context("encode")?));
        }
        let encode = started.elapsed();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        let records: Vec<RecordedEvent> = workload
            .iter()
            .zip(encoded)
            .map(|((stream, event), payload)| RecordedEvent {
                stream: stream.clone(),
                version: Version(1),
                position: Position(1),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let started = Instant::now();
        for record in &records {
            black_box(OrdersEvent::decode(record).context("decode")?);
        }
        let decode = started.elapsed();
        let count = records.len() as f64;
        figures.push(CodecFigures {
            codec,
            bytes_per_event: bytes as f64 / count,
            encode_ns: encode.as_nanos() as f64 / count,
            decode_ns: decode.as_nanos() as f64 / count,
        });
    }
    Ok(figures)
}

/// The figures side by side.
pub fn table(events: usize, figures: &[CodecFigures]) -> String {
    let mut out =
        format!("\npayload codecs on {events} events of W1 (payload only, no metadata)\n\n");
    out.push_str("| codec  | bytes per event | encode ns/event | decode ns/event |\n");
    out.push_str("|--------|----------------:|----------------:|----------------:|\n");
    for f in figures {
        out.push_str(&format!(
            "| {:<6} | {:>15.1} | {:>15.0} | {:>15.0} |\n",
            f.codec.to_string(),
            f.bytes_per_event,
            f.encode_ns,
            f.decode_ns
        ));
    }
    out
}

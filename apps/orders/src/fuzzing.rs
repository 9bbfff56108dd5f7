//! What the fuzz targets in `fuzz/` run, kept here so that an ordinary test compiles and
//! exercises them on every CI run; the fuzzers only feed them bytes. Each takes any bytes
//! and must end with an answer or an error, never a panic.

use strata::{DomainEvent, EventMetadata, Position, RecordedEvent, StreamId, Version};

use crate::domain::{CustomerEvent, OrderEvent, OrdersEvent, ProductEvent, SCHEMAS};

/// Decodes a stored event made from `data` with every decoder of the service: the first
/// byte picks the type name (a known one, or the next bytes up to a 0), the second the
/// schema version, the third the stream's type; the rest is the payload, JSON or binary.
pub fn decode_stored_event(data: &[u8]) {
    let [pick, schema_version, stream, rest @ ..] = data else { return };
    let (event_type, payload) = match SCHEMAS.types.get(usize::from(*pick)) {
        Some((name, _)) => ((*name).to_owned(), rest),
        None => {
            let (name, payload) = rest.split_at(rest.iter().position(|b| *b == 0).unwrap_or(0));
            // The 0 ends the name; the payload follows it.
            (String::from_utf8_lossy(name).into_owned(), payload.get(1..).unwrap_or_default())
        }
    };
    let aggregate_type = ["customer", "product", "order", "other"][usize::from(*stream % 4)];
    let event = RecordedEvent {
        stream: StreamId::new(aggregate_type, "fuzzed"),
        version: Version(1),
        position: Position(1),
        event_type,
        schema_version: u32::from(*schema_version),
        payload: payload.to_vec(),
        metadata: EventMetadata::new("fuzz", None),
    };
    let _ = OrdersEvent::decode(&event);
    let _ = OrderEvent::decode(&event);
    let _ = CustomerEvent::decode(&event);
    let _ = ProductEvent::decode(&event);
    let _ = strata::codec::decode::<serde_json::Value>(&event.payload);
}

/// Reads and checks `data` as `strata events import` reads a file before writing anything.
pub fn check_import_file(data: &[u8]) {
    let _ = crate::cli::events::check_import(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds like the fuzzers start from, and random bytes around them: whatever comes,
    /// an answer or an error, never a panic.
    #[test]
    fn the_fuzz_targets_take_any_bytes() {
        let export_line = br#"{"position":1,"aggregate_type":"order","aggregate_id":"o1","version":1,"type":"LineAdded","schema_version":1,"data":{"sku":"tea","qty":1},"metadata":{"event_id":"0190d7c2-7a3e-7b4c-8f00-000000000001","correlation_id":"c","causation_id":null,"user":null,"recorded_at":"2026-01-01T00:00:00.000000000Z"}}"#;
        let mut seeds: Vec<Vec<u8>> = vec![
            export_line.to_vec(),
            [&[7, 1, 2][..], br#"{"sku":"tea","qty":1,"price_cents":450}"#].concat(),
            [&[6, 1, 2][..], br#"{"customer_id":"ada","lines":[]}"#].concat(),
            vec![200, 1, 1, b'X', 0, 0x80, 0x81],
            Vec::new(),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..2000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..rng.usize(1..8) {
                if bytes.is_empty() {
                    bytes.push(rng.u8(..));
                    continue;
                }
                let at = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[at] = rng.u8(..),
                    1 => bytes.insert(at, rng.u8(..)),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            decode_stored_event(&bytes);
            check_import_file(&bytes);
            seeds.push(bytes);
        }
    }
}

//! How what Redis holds is written as text: table rows, why an instance is parked, waiting
//! and skipped events. Views themselves are the core's JSON (`encode_commit`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use strata::table::{ColumnType, TableSpec, Value};
use strata::{EventMetadata, Parking, Position, RecordedEvent, SkippedEvent, StreamId, Version};

/// Stored text that does not read back: something else wrote under the prefix.
#[derive(Debug, thiserror::Error)]
#[error("{what} in Redis does not read back: {why}")]
pub(crate) struct Unreadable {
    what: &'static str,
    why: String,
}

fn unreadable(what: &'static str, why: impl ToString) -> Unreadable {
    Unreadable { what, why: why.to_string() }
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(n) => Json::from(*n),
        Value::Text(text) => Json::from(text.as_str()),
        Value::Date(day) => Json::from(day.format("%Y-%m-%d").to_string()),
        Value::Timestamp(at) => Json::from(at.timestamp_micros()),
    }
}

/// Values as a JSON array: days as `YYYY-MM-DD`, instants as microseconds. The same values
/// always give the same text, so a row's key can be a hash field.
pub(crate) fn encode_values(values: &[Value]) -> String {
    Json::Array(values.iter().map(value_json).collect()).to_string()
}

/// A row of `spec` written by [`encode_values`], read by its columns' types.
pub(crate) fn decode_row(spec: &TableSpec, text: &str) -> Result<Vec<Value>, Unreadable> {
    let Ok(Json::Array(items)) = serde_json::from_str::<Json>(text) else {
        return Err(unreadable("a row", format!("{text:?} is not a JSON array")));
    };
    if items.len() != spec.columns.len() {
        return Err(unreadable(
            "a row",
            format!("{} has {} columns", spec.name, spec.columns.len()),
        ));
    }
    items
        .into_iter()
        .zip(spec.columns)
        .map(|(item, column)| {
            let wrong = || unreadable("a row", format!("{item} in {}.{}", spec.name, column.name));
            Ok(match (&item, column.ty) {
                (Json::Null, _) => Value::Null,
                (_, ColumnType::Integer) => Value::Integer(item.as_i64().ok_or_else(wrong)?),
                (_, ColumnType::Text) => Value::Text(item.as_str().ok_or_else(wrong)?.to_owned()),
                (_, ColumnType::Date) => Value::Date(
                    item.as_str()
                        .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
                        .ok_or_else(wrong)?,
                ),
                (_, ColumnType::Timestamp) => Value::Timestamp(
                    item.as_i64().and_then(DateTime::from_timestamp_micros).ok_or_else(wrong)?,
                ),
            })
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct StoredParking {
    position: u64,
    error: String,
    attempts: u32,
    parked_at: DateTime<Utc>,
}

pub(crate) fn encode_parking(parking: &Parking) -> String {
    let stored = StoredParking {
        position: parking.position.0,
        error: parking.error.clone(),
        attempts: parking.attempts,
        parked_at: parking.parked_at,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub(crate) fn decode_parking(text: &str) -> Result<Parking, Unreadable> {
    let stored: StoredParking =
        serde_json::from_str(text).map_err(|error| unreadable("a parking", error))?;
    Ok(Parking {
        position: Position(stored.position),
        error: stored.error,
        attempts: stored.attempts,
        parked_at: stored.parked_at,
    })
}

#[derive(Serialize, Deserialize)]
struct StoredSkip {
    view_id: String,
    position: u64,
    event_type: String,
    reason: String,
    skipped_at: DateTime<Utc>,
}

pub(crate) fn encode_skipped(skipped: &SkippedEvent) -> String {
    let stored = StoredSkip {
        view_id: skipped.view_id.clone(),
        position: skipped.position.0,
        event_type: skipped.event_type.clone(),
        reason: skipped.reason.clone(),
        skipped_at: skipped.skipped_at,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub(crate) fn decode_skipped(text: &str) -> Result<SkippedEvent, Unreadable> {
    let stored: StoredSkip =
        serde_json::from_str(text).map_err(|error| unreadable("a skipped event", error))?;
    Ok(SkippedEvent {
        view_id: stored.view_id,
        position: Position(stored.position),
        event_type: stored.event_type,
        reason: stored.reason,
        skipped_at: stored.skipped_at,
    })
}

/// An event as it waits on a parked instance: every field, the payload in hex (it is any
/// bytes, and waiting events are few).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    aggregate_type: String,
    aggregate_id: String,
    version: u64,
    position: u64,
    event_type: String,
    schema_version: u32,
    payload: String,
    metadata: EventMetadata,
}

pub(crate) fn encode_event(event: &RecordedEvent) -> String {
    let stored = StoredEvent {
        aggregate_type: event.stream.aggregate_type.clone(),
        aggregate_id: event.stream.id.clone(),
        version: event.version.0,
        position: event.position.0,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        payload: event.payload.iter().map(|byte| format!("{byte:02x}")).collect(),
        metadata: event.metadata.clone(),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub(crate) fn decode_event(text: &str) -> Result<RecordedEvent, Unreadable> {
    let stored: StoredEvent =
        serde_json::from_str(text).map_err(|error| unreadable("a parked event", error))?;
    let hex = stored.payload.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(unreadable("a parked event", "a payload of odd length"));
    }
    let payload = hex
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| unreadable("a parked event", "a payload that is not hex"))
        })
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(RecordedEvent {
        stream: StreamId::new(stored.aggregate_type, stored.aggregate_id),
        version: Version(stored.version),
        position: Position(stored.position),
        event_type: stored.event_type,
        schema_version: stored.schema_version,
        payload,
        metadata: stored.metadata,
    })
}

#[cfg(test)]
mod tests {
    use strata::table::{Column, TableKind};

    use super::*;

    static SPEC: TableSpec = TableSpec {
        name: "t",
        columns: &[
            Column::new("i", ColumnType::Integer),
            Column::new("s", ColumnType::Text),
            Column::new("d", ColumnType::Date),
            Column::new("at", ColumnType::Timestamp),
            Column::nullable("n", ColumnType::Text),
        ],
        key_columns: 1,
        indexes: &[],
        kind: TableKind::Rows,
    };

    #[test]
    fn rows_read_back_as_written_and_strangers_are_refused() {
        let row = vec![
            Value::Integer(-7),
            Value::Text("a\"b\n".into()),
            Value::Date(NaiveDate::from_ymd_opt(2026, 11, 28).expect("a day")),
            Value::Timestamp(
                DateTime::from_timestamp_micros(1_800_000_000_123_456).expect("an instant"),
            ),
            Value::Null,
        ];
        let text = encode_values(&row);
        assert_eq!(decode_row(&SPEC, &text).expect("reads back"), row);
        for stranger in ["{}", "[1]", "[\"x\",\"s\",\"2026-11-28\",1,null]", "not json"] {
            assert!(decode_row(&SPEC, stranger).is_err(), "{stranger} must be refused");
        }
    }

    #[test]
    fn waiting_events_keep_every_byte() {
        let mut metadata = EventMetadata::new("c", Some("cause".into()));
        metadata.user = Some("u".into());
        let event = RecordedEvent {
            stream: StreamId::new("order", "o:1"),
            version: Version(3),
            position: Position(42),
            event_type: "Placed".into(),
            schema_version: 2,
            payload: vec![0, 255, 16, b'{'],
            metadata,
        };
        assert_eq!(decode_event(&encode_event(&event)).expect("reads back"), event);
    }
}

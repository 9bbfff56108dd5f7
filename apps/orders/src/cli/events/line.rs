//! The line format of `strata events export` and `import`: one JSON object per event, a
//! struct of its own (not the core's `RecordedEvent`) so that the file format is written
//! down here and does not change when the core's types do.

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use strata::{Codec, EventMetadata, NewEvent, Position, RecordedEvent, StreamId, Version};
use uuid::Uuid;

/// One event as a line of the export. A struct of its own, not `RecordedEvent`, so that the
/// file format is written down here and does not change when the core's types do.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventLine {
    /// The event's position in the source store; import checks that it increases.
    pub(super) position: u64,
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) version: u64,
    #[serde(rename = "type")]
    pub(super) event_type: String,
    pub(super) schema_version: u32,
    /// The payload, kept byte for byte: a raw value is neither re-ordered nor re-formatted.
    /// A binary payload is shown as the JSON it decodes to.
    pub(super) data: Box<RawValue>,
    /// The codec the payload is stored with; left out for JSON, so import stores it the same.
    #[serde(default, skip_serializing_if = "Codec::is_json")]
    pub(super) codec: Codec,
    pub(super) metadata: MetadataLine,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetadataLine {
    pub(super) event_id: Uuid,
    pub(super) correlation_id: String,
    pub(super) causation_id: Option<String>,
    pub(super) user: Option<String>,
    /// RFC 3339 with all nine fractional digits: the stores keep nanoseconds, and an
    /// export that rounded them would not import as the same event.
    #[serde(with = "rfc3339_nanos")]
    pub(super) recorded_at: DateTime<Utc>,
}

mod rfc3339_nanos {
    //! `DateTime<Utc>` as RFC 3339 with nanoseconds, e.g. `2024-05-01T12:00:00.123456789Z`.

    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| serde::de::Error::custom(format!("recorded_at {text:?}: {error}")))
    }
}

impl EventLine {
    pub(super) fn from_recorded(event: &RecordedEvent) -> anyhow::Result<Self> {
        let not_json = |reason: String| {
            anyhow!(
                "the event at position {} ({} version {}, {}) has a payload that does not \
                 decode as JSON or binary ({reason})",
                event.position,
                event.stream,
                event.version,
                event.event_type
            )
        };
        let codec = Codec::of(&event.payload);
        let mut data: Box<RawValue> = match codec {
            Codec::Json => {
                let text =
                    std::str::from_utf8(&event.payload).map_err(|e| not_json(e.to_string()))?;
                serde_json::from_str(text).map_err(|e| not_json(e.to_string()))?
            }
            Codec::Binary => {
                let value: serde_json::Value =
                    strata::codec::decode(&event.payload).map_err(|e| not_json(e.to_string()))?;
                RawValue::from_string(value.to_string()).map_err(|e| not_json(e.to_string()))?
            }
        };
        // A line break inside the payload (only possible as whitespace between tokens: JSON
        // strings escape theirs) would split the line; such a payload is written compacted.
        if data.get().contains(['\n', '\r']) {
            data =
                RawValue::from_string(compact(data.get())).map_err(|e| not_json(e.to_string()))?;
        }
        let metadata = &event.metadata;
        Ok(Self {
            position: event.position.0,
            aggregate_type: event.stream.aggregate_type.clone(),
            aggregate_id: event.stream.id.clone(),
            version: event.version.0,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            data,
            codec,
            metadata: MetadataLine {
                event_id: metadata.event_id,
                correlation_id: metadata.correlation_id.clone(),
                causation_id: metadata.causation_id.clone(),
                user: metadata.user.clone(),
                recorded_at: metadata.recorded_at,
            },
        })
    }

    pub(super) fn stream(&self) -> StreamId {
        StreamId::new(self.aggregate_type.clone(), self.aggregate_id.clone())
    }

    /// The event as it was recorded at its position; a binary payload is encoded again
    /// from its JSON.
    pub(super) fn into_recorded(self) -> anyhow::Result<RecordedEvent> {
        let (stream, version, position) =
            (self.stream(), Version(self.version), Position(self.position));
        Ok(self.into_new_event()?.recorded(stream, version, position))
    }

    /// The event to append; a binary payload is encoded again from its JSON.
    pub(super) fn into_new_event(self) -> anyhow::Result<NewEvent> {
        let payload = match self.codec {
            Codec::Json => self.data.get().as_bytes().to_vec(),
            Codec::Binary => {
                let value: serde_json::Value = serde_json::from_str(self.data.get())?;
                Codec::Binary.encode(&value)?
            }
        };
        Ok(NewEvent {
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload,
            metadata: EventMetadata {
                event_id: self.metadata.event_id,
                correlation_id: self.metadata.correlation_id,
                causation_id: self.metadata.causation_id,
                user: self.metadata.user,
                recorded_at: self.metadata.recorded_at,
            },
        })
    }
}

/// Valid JSON without whitespace between tokens.
pub(super) fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_with_line_breaks_are_compacted_and_strings_kept() {
        assert_eq!(
            compact("{\n  \"a b\": \"x\\\" \\n y\",\r\n \"c\": [1, 2]\n}"),
            r#"{"a b":"x\" \n y","c":[1,2]}"#
        );
    }
}

//! Reading what older code wrote. A stored event keeps the schema version its payload was
//! written in, forever; when the code moves a type to a new version, an [`Upcaster`] turns
//! a payload of the old version into the new one on every read, so stored rows are never
//! rewritten. Upcasters chain: a version 1 payload of a type now at version 3 goes through
//! the 1 → 2 and the 2 → 3 upcasters before it is decoded.
//!
//! Upcasters work on JSON values: payloads are JSON objects whatever else they are, and a
//! change of schema is a change of fields.

use serde::de::DeserializeOwned;

use crate::event::{DecodeError, RecordedEvent};
use crate::store::{EventStore, StoreError};

/// Turns a payload of `event_type` at schema version `from` into version `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The event type it reads.
    pub event_type: &'static str,
    /// The schema version it reads.
    pub from: u32,
    /// The change; an error says why this payload cannot be brought forward.
    pub upcast: fn(serde_json::Value) -> Result<serde_json::Value, String>,
}

/// The event types a domain writes, the schema version of each, and the upcasters that
/// bring older versions up to it.
#[derive(Debug, Clone, Copy)]
pub struct EventSchemas {
    /// Every type the domain knows, with the schema version it writes now.
    pub types: &'static [(&'static str, u32)],
    /// How older versions are read.
    pub upcasters: &'static [Upcaster],
}

/// Why a stored (type, schema version) cannot be read by this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// The domain has no type of that name.
    #[error("event type {event_type:?} is unknown to this code")]
    UnknownType {
        /// The stored type name.
        event_type: String,
    },
    /// Written by newer code than this.
    #[error("{event_type} schema version {version} is newer than this code's version {current}")]
    Newer {
        /// The stored type name.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The version this code writes.
        current: u32,
    },
    /// No upcaster reads one of the versions between the stored one and the current one.
    #[error(
        "{event_type} schema version {version} has no path to version {current}: no upcaster reads version {missing}"
    )]
    NoPath {
        /// The stored type name.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The version this code writes.
        current: u32,
        /// The first version no upcaster reads.
        missing: u32,
    },
}

impl EventSchemas {
    /// A domain that declares nothing: any type, at version 1 only.
    pub const UNDECLARED: EventSchemas = EventSchemas { types: &[], upcasters: &[] };

    /// The schema version this code writes for `event_type` (1 for an undeclared type).
    pub fn current(&self, event_type: &str) -> u32 {
        self.types.iter().find(|(name, _)| *name == event_type).map_or(1, |(_, version)| *version)
    }

    fn upcaster(&self, event_type: &str, from: u32) -> Option<&Upcaster> {
        self.upcasters.iter().find(|u| u.event_type == event_type && u.from == from)
    }

    /// Whether events of `event_type` stored at `version` can be read: the type is known and
    /// an upcaster reads each version from the stored one up to the current one.
    pub fn check(&self, event_type: &str, version: u32) -> Result<(), Unreadable> {
        let known = self.types.is_empty() || self.types.iter().any(|(name, _)| *name == event_type);
        if !known {
            return Err(Unreadable::UnknownType { event_type: event_type.to_owned() });
        }
        let current = self.current(event_type);
        if version > current {
            return Err(Unreadable::Newer { event_type: event_type.to_owned(), version, current });
        }
        match (version..current).find(|&from| self.upcaster(event_type, from).is_none()) {
            Some(missing) => Err(Unreadable::NoPath {
                event_type: event_type.to_owned(),
                version,
                current,
                missing,
            }),
            None => Ok(()),
        }
    }

    /// Every (type, schema version) `store` holds that this code cannot read; empty when it
    /// can read the whole log. Meant for start-up: on the SQL stores it reads the whole log.
    pub async fn unreadable_in<S: EventStore>(
        &self,
        store: &S,
    ) -> Result<Vec<Unreadable>, StoreError> {
        let mut stored = store.event_types().await?;
        stored.sort_unstable();
        Ok(stored
            .into_iter()
            .filter_map(|(event_type, version)| self.check(&event_type, version).err())
            .collect())
    }

    /// Decodes `record`'s payload (either codec) as the current version of its type, upcasting a
    /// payload of an older version first.
    pub fn decode<T: DeserializeOwned>(&self, record: &RecordedEvent) -> Result<T, DecodeError> {
        let current = self.current(&record.event_type);
        if record.schema_version == current {
            return crate::event::decode_payload(record);
        }
        let refuse = |reason: String| DecodeError::Upcast {
            event_type: record.event_type.clone(),
            schema_version: record.schema_version,
            reason,
        };
        self.check(&record.event_type, record.schema_version)
            .map_err(|unreadable| refuse(unreadable.to_string()))?;
        let mut value: serde_json::Value = crate::event::decode_payload(record)?;
        for from in record.schema_version..current {
            let upcaster = self
                .upcaster(&record.event_type, from)
                .ok_or_else(|| refuse(format!("no upcaster reads version {from}")))?;
            value = (upcaster.upcast)(value)
                .map_err(|reason| refuse(format!("upcasting version {from}: {reason}")))?;
        }
        serde_json::from_value(value).map_err(|source| DecodeError::Payload {
            event_type: record.event_type.clone(),
            source: source.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMetadata;
    use crate::stream::{Position, StreamId, Version};

    fn renamed(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        let object = value.as_object_mut().ok_or("not an object")?;
        let n = object.remove("n").ok_or("no n")?;
        object.insert("count".into(), n);
        Ok(value)
    }

    fn doubled(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        let count = value["count"].as_i64().ok_or("no count")?;
        value["count"] = (count * 2).into();
        Ok(value)
    }

    const SCHEMAS: EventSchemas = EventSchemas {
        types: &[("Counted", 3), ("Other", 1)],
        upcasters: &[
            Upcaster { event_type: "Counted", from: 1, upcast: renamed },
            Upcaster { event_type: "Counted", from: 2, upcast: doubled },
        ],
    };

    fn stored(event_type: &str, schema_version: u32, payload: &str) -> RecordedEvent {
        RecordedEvent {
            stream: StreamId::new("t", "1"),
            version: Version(1),
            position: Position(1),
            event_type: event_type.to_owned(),
            schema_version,
            payload: payload.as_bytes().to_vec(),
            metadata: EventMetadata::new("c", None),
        }
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Counted {
        count: i64,
    }

    #[test]
    fn old_payloads_go_through_every_upcaster_up_to_the_current_version() {
        let v1 = SCHEMAS.decode::<Counted>(&stored("Counted", 1, r#"{"n": 5}"#)).unwrap();
        let v2 = SCHEMAS.decode::<Counted>(&stored("Counted", 2, r#"{"count": 5}"#)).unwrap();
        let v3 = SCHEMAS.decode::<Counted>(&stored("Counted", 3, r#"{"count": 5}"#)).unwrap();
        assert_eq!((v1.count, v2.count, v3.count), (10, 10, 5));
    }

    #[test]
    fn versions_without_a_path_are_named() {
        assert_eq!(SCHEMAS.check("Counted", 1), Ok(()));
        assert!(matches!(SCHEMAS.check("Counted", 4), Err(Unreadable::Newer { current: 3, .. })));
        assert!(matches!(SCHEMAS.check("Other", 0), Err(Unreadable::NoPath { missing: 0, .. })));
        assert!(matches!(SCHEMAS.check("Gone", 1), Err(Unreadable::UnknownType { .. })));
        let error = SCHEMAS.decode::<Counted>(&stored("Counted", 4, "{}")).unwrap_err();
        assert!(error.to_string().contains("newer than this code's version 3"), "{error}");
        assert_eq!(EventSchemas::UNDECLARED.check("Anything", 1), Ok(()));
    }
}

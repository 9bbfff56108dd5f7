//! Events as the store keeps them ([`NewEvent`], [`RecordedEvent`]), their [`EventMetadata`],
//! and the bridge to typed domain events ([`DomainEvent`], [`Envelope`]).
//!
//! Payloads are opaque bytes to the store: a domain event type decides its own encoding
//! (the orders service uses JSON), so no backend is tied to one serialization format.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{Codec, CodecError};
use crate::stream::{Position, StreamId, Version};

/// Who and what caused an event; stored with every event and never interpreted by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Unique id of this event (UUID v7, so ids sort roughly by creation time).
    pub event_id: Uuid,
    /// Shared by every event that one outside request caused, across aggregates and sagas.
    pub correlation_id: String,
    /// The id of the command (or event) that directly caused this event.
    pub causation_id: Option<String>,
    /// The user on whose behalf the command ran, when known.
    pub user: Option<String>,
    /// When the command that emitted this event was handled.
    pub recorded_at: DateTime<Utc>,
}

impl EventMetadata {
    /// Fresh metadata for an event caused by `causation_id` within `correlation_id`.
    pub fn new(correlation_id: impl Into<String>, causation_id: Option<String>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            correlation_id: correlation_id.into(),
            causation_id,
            user: None,
            recorded_at: Utc::now(),
        }
    }
}

/// An event on its way into the store: everything but the stream version and global
/// position, which the store assigns when it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's type name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The version of the payload's schema for this type; upcasters read old versions.
    pub schema_version: u32,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Ids, causation and time.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// The event as committed in `stream` at `version` and `position`.
    pub fn recorded(self, stream: StreamId, version: Version, position: Position) -> RecordedEvent {
        RecordedEvent {
            stream,
            version,
            position,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            metadata: self.metadata,
        }
    }
}

/// A committed event's content, to append it again elsewhere (a replica's copy).
impl From<RecordedEvent> for NewEvent {
    fn from(event: RecordedEvent) -> Self {
        NewEvent {
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload,
            metadata: event.metadata,
        }
    }
}

/// An event as committed: its stream, stream version, global position and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The stream (aggregate type and id) it belongs to.
    pub stream: StreamId,
    /// Its version within the stream, from 1.
    pub version: Version,
    /// Its position in the whole store, from 1.
    pub position: Position,
    /// The event's type name.
    pub event_type: String,
    /// The version of the payload's schema.
    pub schema_version: u32,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Ids, causation and time.
    pub metadata: EventMetadata,
}

/// Why a stored event could not be turned into a domain event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The type name is not one this domain event type knows.
    #[error("unknown event type {event_type:?} (schema version {schema_version})")]
    UnknownType {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },
    /// A payload of an older schema version could not be brought to the current one.
    #[error("{event_type:?} schema version {schema_version} cannot be read: {reason}")]
    Upcast {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// Why.
        reason: String,
    },
    /// The payload does not match the type's schema.
    #[error("payload of {event_type:?} does not decode: {source}")]
    Payload {
        /// The stored type name.
        event_type: String,
        /// What the decoder said.
        #[source]
        source: CodecError,
    },
}

/// A typed domain event that knows its stored name, schema version and encoding.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// The stored type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes.
    fn schema_version(&self) -> u32 {
        Self::schemas().current(self.event_type())
    }

    /// The types this domain writes, their schema versions and the upcasters that read
    /// older ones; checked against the store at start-up.
    fn schemas() -> &'static crate::upcast::EventSchemas {
        &crate::upcast::EventSchemas::UNDECLARED
    }

    /// Encodes the payload (without the type name, which is stored beside it) with `codec`.
    fn encode(&self, codec: Codec) -> Result<Vec<u8>, CodecError>;

    /// Decodes a stored event. The whole record is given so that a type spanning several
    /// aggregates can tell them apart by `record.stream.aggregate_type`.
    fn decode(record: &RecordedEvent) -> Result<Self, DecodeError>;

    /// Encodes this event as JSON with `metadata` for appending.
    fn to_new_event(&self, metadata: EventMetadata) -> Result<NewEvent, CodecError> {
        self.to_new_event_as(metadata, Codec::Json)
    }

    /// Encodes this event with `codec` and `metadata` for appending.
    fn to_new_event_as(
        &self,
        metadata: EventMetadata,
        codec: Codec,
    ) -> Result<NewEvent, CodecError> {
        Ok(NewEvent {
            event_type: self.event_type().to_owned(),
            schema_version: self.schema_version(),
            payload: self.encode(codec)?,
            metadata,
        })
    }
}

/// Decodes a payload of either codec into `T`, naming the event type in the error.
pub fn decode_payload<T: serde::de::DeserializeOwned>(
    record: &RecordedEvent,
) -> Result<T, DecodeError> {
    crate::codec::decode(&record.payload)
        .map_err(|source| DecodeError::Payload { event_type: record.event_type.clone(), source })
}

/// The error for a type name that a [`DomainEvent::decode`] does not know.
pub fn unknown_type(record: &RecordedEvent) -> DecodeError {
    DecodeError::UnknownType {
        event_type: record.event_type.clone(),
        schema_version: record.schema_version,
    }
}

/// A decoded domain event together with where and when it was recorded.
#[derive(Debug, Clone)]
pub struct Envelope<E> {
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its version within the stream.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// Ids, causation and time.
    pub metadata: EventMetadata,
    /// The event itself.
    pub event: E,
}

impl<E: DomainEvent> Envelope<E> {
    /// Decodes a recorded event.
    pub fn decode(record: &RecordedEvent) -> Result<Self, DecodeError> {
        Ok(Envelope {
            stream: record.stream.clone(),
            version: record.version,
            position: record.position,
            metadata: record.metadata.clone(),
            event: E::decode(record)?,
        })
    }
}

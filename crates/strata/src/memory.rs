//! In-memory implementations of the store contracts, for tests and for `--store memory`.
//! They keep every promise of the contracts except durability: a dropped store is gone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::event::{NewEvent, RecordedEvent};
use crate::idempotency::{IdempotencyError, IdempotencyRecord, IdempotencyStore};
use crate::store::{AppendOutcome, EventStore, StoreError, check_append};
use crate::stream::{ExpectedVersion, Position, StreamId, Version};
use crate::view::{StoredView, ViewError, ViewManager, decode_view, encode_views};

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated: every mutation
    // below is completed before anything that could panic, so the data stays usable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An event store held in memory.
pub struct InMemoryEventStore {
    log: Mutex<Log>,
    head: watch::Sender<Position>,
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    /// Indexes into `events` per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    event_ids: std::collections::HashSet<uuid::Uuid>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self { log: Mutex::default(), head: watch::channel(Position::START).0 }
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        check_append(stream, &events)?;
        let mut log = locked(&self.log);
        let actual = Version(log.streams.get(stream).map_or(0, |indexes| indexes.len() as u64));
        if !expected.matches(actual) {
            return Err(StoreError::Conflict { stream: stream.clone(), expected, actual });
        }
        if let Some(stored) = events.iter().find(|e| log.event_ids.contains(&e.metadata.event_id)) {
            return Err(StoreError::DuplicateEventId(stored.metadata.event_id));
        }
        let first_position = Position(log.events.len() as u64 + 1);
        let mut version = actual;
        for event in events {
            version = Version(version.0 + 1);
            let position = Position(log.events.len() as u64 + 1);
            let index = log.events.len();
            log.event_ids.insert(event.metadata.event_id);
            log.events.push(RecordedEvent {
                stream: stream.clone(),
                version,
                position,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
            });
            log.streams.entry(stream.clone()).or_default().push(index);
        }
        let last_position = Position(log.events.len() as u64);
        self.head.send_replace(last_position);
        Ok(AppendOutcome { version, first_position, last_position })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = locked(&self.log);
        let Some(indexes) = log.streams.get(stream) else { return Ok(Vec::new()) };
        let skip = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(indexes.iter().skip(skip).map(|&index| log.events[index].clone()).collect())
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = locked(&self.log);
        let skip = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(log.events.iter().skip(skip).take(limit).cloned().collect())
    }

    fn subscribe(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }
}

/// A view manager held in memory. Views are kept encoded, as a real store keeps them, so
/// that a view type that does not round-trip fails here too.
#[derive(Default)]
pub struct InMemoryViewManager {
    state: Mutex<ViewState>,
}

#[derive(Default)]
struct ViewState {
    views: HashMap<(String, String), (Vec<u8>, Position)>,
    checkpoints: HashMap<String, Position>,
}

impl InMemoryViewManager {
    /// An empty view manager.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ViewManager for InMemoryViewManager {
    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        let state = locked(&self.state);
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some((bytes, position)) = state.views.get(&(projection.to_owned(), id.clone())) {
                found.insert(id.clone(), decode_view(projection, id, bytes, *position)?);
            }
        }
        Ok(found)
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let state = locked(&self.state);
        match state.views.get(&(projection.to_owned(), id.to_owned())) {
            Some((bytes, position)) => decode_view(projection, id, bytes, *position).map(Some),
            None => Ok(None),
        }
    }

    async fn checkpoint(&self, projection: &str) -> Result<Position, ViewError> {
        Ok(locked(&self.state).checkpoints.get(projection).copied().unwrap_or_default())
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        from: Position,
        to: Position,
        views: Vec<(String, StoredView<V>)>,
    ) -> Result<(), ViewError> {
        // Encoded before taking the lock, so that a codec error writes nothing.
        let encoded = encode_views(projection, views)?;
        let mut state = locked(&self.state);
        let actual = state.checkpoints.get(projection).copied().unwrap_or_default();
        if actual != from {
            return Err(ViewError::Fenced {
                projection: projection.to_owned(),
                expected: from,
                actual,
            });
        }
        for view in encoded {
            state.views.insert((projection.to_owned(), view.id), (view.data, view.position));
        }
        state.checkpoints.insert(projection.to_owned(), to);
        Ok(())
    }
}

/// An idempotency store held in memory.
#[derive(Default)]
pub struct InMemoryIdempotencyStore {
    records: Mutex<HashMap<String, IdempotencyRecord>>,
}

impl IdempotencyStore for InMemoryIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        Ok(locked(&self.records).get(key).cloned())
    }

    async fn put(&self, key: &str, record: IdempotencyRecord) -> Result<(), IdempotencyError> {
        locked(&self.records).entry(key.to_owned()).or_insert(record);
        Ok(())
    }
}

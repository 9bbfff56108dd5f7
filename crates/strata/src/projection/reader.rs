//! [`SharedReader`]: one read and one decode per event for every projection of a node.
//!
//! Projections of one node usually follow the head together, so each would read and decode
//! the same new events. The reader keeps the most recent events decoded, in position order;
//! the first projection to ask for a range reads it from the store (others asking for the
//! same range wait for that read rather than repeating it), and the rest take it from
//! memory. A projection far behind (after a restart) reads past the cache without filling
//! it, so it cannot evict what the others need; rebuilds read past it too.
//!
//! Every projection still keeps its own checkpoint and commits on its own: the reader only
//! shares reading.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::event::{DomainEvent, Envelope, RecordedEvent};
use crate::store::{EventStore, StoreError};
use crate::stream::Position;

/// How many decoded events a reader keeps by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// An event as read from the store, decoded once for every projection of the node.
#[derive(Debug)]
pub struct ReadEvent<E> {
    /// Its global position.
    pub position: Position,
    decoded: Decoded<E>,
}

#[derive(Debug)]
enum Decoded<E> {
    /// The event, and what else the store holds of it (kept for parking). The stored
    /// event's parts are moved here, not copied: this is every event of every batch.
    Event { envelope: Envelope<E>, event_type: String, schema_version: u32, payload: Vec<u8> },
    /// The event as stored, and why it does not decode.
    Undecodable { record: RecordedEvent, error: String },
}

impl<E: DomainEvent> ReadEvent<E> {
    /// Decodes `record`.
    pub fn new(record: RecordedEvent) -> Self {
        let position = record.position;
        let decoded = match E::decode(&record) {
            Ok(event) => {
                let RecordedEvent {
                    stream,
                    version,
                    position,
                    event_type,
                    schema_version,
                    payload,
                    metadata,
                } = record;
                let envelope = Envelope { stream, version, position, metadata, event };
                Decoded::Event { envelope, event_type, schema_version, payload }
            }
            Err(error) => Decoded::Undecodable { error: error.to_string(), record },
        };
        Self { position, decoded }
    }
}

impl<E> ReadEvent<E> {
    /// The decoded event, or why it does not decode.
    pub fn envelope(&self) -> Result<&Envelope<E>, &str> {
        match &self.decoded {
            Decoded::Event { envelope, .. } => Ok(envelope),
            Decoded::Undecodable { error, .. } => Err(error),
        }
    }

    /// The event as stored, when it does not decode (what a raw locator reads).
    pub fn undecodable(&self) -> Option<&RecordedEvent> {
        match &self.decoded {
            Decoded::Event { .. } => None,
            Decoded::Undecodable { record, .. } => Some(record),
        }
    }

    /// The event's place and metadata.
    pub fn logged(&self) -> crate::view::LoggedEvent<'_> {
        match &self.decoded {
            Decoded::Event { envelope, event_type, .. } => crate::view::LoggedEvent {
                position: envelope.position,
                stream: &envelope.stream,
                version: envelope.version,
                event_type,
                metadata: &envelope.metadata,
            },
            Decoded::Undecodable { record, .. } => crate::view::LoggedEvent {
                position: record.position,
                stream: &record.stream,
                version: record.version,
                event_type: &record.event_type,
                metadata: &record.metadata,
            },
        }
    }

    /// The event as stored, put back together: what parking keeps, so that a fixed
    /// decoder reads it again.
    pub fn record(&self) -> RecordedEvent {
        match &self.decoded {
            Decoded::Event { envelope, event_type, schema_version, payload } => RecordedEvent {
                stream: envelope.stream.clone(),
                version: envelope.version,
                position: envelope.position,
                event_type: event_type.clone(),
                schema_version: *schema_version,
                payload: payload.clone(),
                metadata: envelope.metadata.clone(),
            },
            Decoded::Undecodable { record, .. } => record.clone(),
        }
    }
}

/// Reads the log for several projections of one node, sharing recent events.
pub struct SharedReader<S, E> {
    store: Arc<S>,
    cache: Mutex<Cache<E>>,
    /// Held while reading into the cache, so that projections asking for the same new
    /// events wait for one read instead of each doing their own.
    filling: tokio::sync::Mutex<()>,
    capacity: usize,
    events_read: AtomicU64,
}

/// Every event after `after`, up to the last one held, in position order.
struct Cache<E> {
    after: Position,
    events: VecDeque<Arc<ReadEvent<E>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache is replaced or extended in single steps; a panic elsewhere cannot leave it
    // half-written.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: EventStore, E: DomainEvent> SharedReader<S, E> {
    /// A reader of `store` keeping [`DEFAULT_CAPACITY`] decoded events.
    pub fn new(store: Arc<S>) -> Arc<Self> {
        Self::with_capacity(store, DEFAULT_CAPACITY)
    }

    /// A reader of `store` keeping `capacity` decoded events.
    pub fn with_capacity(store: Arc<S>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache: Mutex::new(Cache { after: Position::START, events: VecDeque::new() }),
            filling: tokio::sync::Mutex::new(()),
            capacity: capacity.max(1),
            events_read: AtomicU64::new(0),
        })
    }

    /// The store read.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// How many events were read from the store so far (cache hits are not counted).
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    /// Up to `limit` events after `after`, in position order, decoded.
    pub async fn read(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Arc<ReadEvent<E>>>, StoreError> {
        if let Some(hit) = self.cached(after, limit) {
            return Ok(hit);
        }
        let _filling = self.filling.lock().await;
        if let Some(hit) = self.cached(after, limit) {
            return Ok(hit);
        }
        let read = self.read_past(after, limit).await?;
        self.remember(after, &read);
        Ok(read)
    }

    /// Up to `limit` events after `after`, read from the store without touching the cache.
    pub async fn read_past(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Arc<ReadEvent<E>>>, StoreError> {
        let records = self.store.read_all(after, limit).await?;
        self.events_read.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(records.into_iter().map(|record| Arc::new(ReadEvent::new(record))).collect())
    }

    /// Starts reading up to `limit` events after `after` past the cache, in the background,
    /// for a caller that will want them next.
    pub(crate) fn read_ahead(self: &Arc<Self>, after: Position, limit: usize) -> ReadAhead<E> {
        let reader = self.clone();
        let task = tokio::spawn(async move { reader.read_past(after, limit).await });
        ReadAhead { after, task: Some(task) }
    }

    fn cached(&self, after: Position, limit: usize) -> Option<Vec<Arc<ReadEvent<E>>>> {
        let cache = locked(&self.cache);
        let last = cache.events.back()?.position;
        if after < cache.after || after >= last {
            return None;
        }
        let start = cache.events.partition_point(|event| event.position <= after);
        Some(cache.events.iter().skip(start).take(limit).cloned().collect())
    }

    fn remember(&self, after: Position, read: &[Arc<ReadEvent<E>>]) {
        let Some(newest) = read.last() else { return };
        let mut cache = locked(&self.cache);
        let end = cache.events.back().map_or(cache.after, |event| event.position);
        if after == end {
            cache.events.extend(read.iter().cloned());
        } else if after > end || newest.position > end && cache.events.is_empty() {
            *cache = Cache { after, events: read.iter().cloned().collect() };
        } else {
            // An older range, read by a projection that is behind: not worth keeping.
            return;
        }
        while cache.events.len() > self.capacity {
            if let Some(evicted) = cache.events.pop_front() {
                cache.after = evicted.position;
            }
        }
    }
}

/// A read running in the background.
type Reading<E> = tokio::task::JoinHandle<Result<Vec<Arc<ReadEvent<E>>>, StoreError>>;

/// A read of the events after a position, started before they are needed. Dropping it
/// stops the read.
pub(crate) struct ReadAhead<E> {
    after: Position,
    task: Option<Reading<E>>,
}

impl<E> ReadAhead<E> {
    /// The position the read started after.
    pub(crate) fn after(&self) -> Position {
        self.after
    }

    /// The events read.
    pub(crate) async fn events(mut self) -> Result<Vec<Arc<ReadEvent<E>>>, StoreError> {
        let Some(task) = self.task.take() else { return Ok(Vec::new()) };
        match task.await {
            Ok(read) => read,
            Err(failed) => Err(StoreError::Backend(Box::new(failed))),
        }
    }
}

impl<E> Drop for ReadAhead<E> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

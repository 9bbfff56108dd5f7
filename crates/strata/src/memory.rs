//! In-memory implementations of the store contracts, for tests and for `--store memory`.
//! They keep every promise of the contracts except durability: a dropped store is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::bus::CommandOutcome;
use crate::event::{NewEvent, RecordedEvent};
use crate::idempotency::{IdempotencyClaim, IdempotencyError, IdempotencyRecord, IdempotencyStore};
use crate::snapshot::Snapshot;
use crate::store::{AppendOutcome, EventStore, StoreError, check_append};
use crate::stream::{ExpectedVersion, Position, StreamId, Version};
use crate::table::{self, TableQuery, TableSpec, Value};
use crate::view::{Parking, StoredView, decode_view};
use crate::view_manager::{
    Checkpoint, Commit, EncodedCommit, ParkedInstance, ProjectionRecord, RebuildRecord,
    SkippedEvent, Slot, ViewError, ViewManager, check_projection_name, encode_commit,
};

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
    events: Segments,
    /// Indexes into `events` per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    event_ids: std::collections::HashSet<uuid::Uuid>,
    /// Idempotency records by key, with when each was made.
    keys: HashMap<String, (IdempotencyRecord, DateTime<Utc>)>,
    snapshots: HashMap<StreamId, Snapshot>,
}

/// How many events one segment of the log holds.
const SEGMENT: usize = 1 << 14;

/// The log's events in segments of a fixed capacity, never moved once stored. One growing
/// `Vec` moved the whole log into a larger allocation each time it doubled, under the lock
/// every append and read waits on: with an allocator that copies large reallocations, at a
/// million events that was hundreds of megabytes copied into freshly zeroed pages while
/// every client stood still (docs/benchmarks.md, seventh round).
#[derive(Default)]
struct Segments {
    /// Every segment but the last is full. Shared, so that a read takes references under
    /// the lock and copies the events after it: a projection's batch of a thousand events
    /// copied under the lock held every append back for as long.
    segments: Vec<Vec<Arc<RecordedEvent>>>,
}

impl Segments {
    fn len(&self) -> usize {
        self.segments.last().map_or(0, |last| (self.segments.len() - 1) * SEGMENT + last.len())
    }

    fn push(&mut self, event: Arc<RecordedEvent>) {
        match self.segments.last_mut() {
            Some(segment) if segment.len() < SEGMENT => segment.push(event),
            _ => {
                let mut segment = Vec::with_capacity(SEGMENT);
                segment.push(event);
                self.segments.push(segment);
            }
        }
    }

    fn get(&self, index: usize) -> Option<&Arc<RecordedEvent>> {
        self.segments.get(index / SEGMENT)?.get(index % SEGMENT)
    }

    /// The events from `start` (an index) on, in order.
    fn starting_at(&self, start: usize) -> impl Iterator<Item = &Arc<RecordedEvent>> {
        let skip = start % SEGMENT;
        self.segments.iter().skip(start / SEGMENT).enumerate().flat_map(move |(n, segment)| {
            let from = if n == 0 { skip } else { 0 };
            segment.get(from..).unwrap_or_default().iter()
        })
    }
}

/// Copies of shared events, made after the log's lock is let go.
fn owned(shared: Vec<Arc<RecordedEvent>>) -> Vec<RecordedEvent> {
    shared.into_iter().map(Arc::unwrap_or_clone).collect()
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
    async fn append_claimed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<AppendOutcome, StoreError> {
        check_append(stream, &events)?;
        // Made before the lock is taken, which every append and read waits for: only their
        // versions and positions are decided under it.
        let recorded: Vec<Arc<RecordedEvent>> = events
            .into_iter()
            .map(|event| Arc::new(event.recorded(stream.clone(), Version(0), Position::START)))
            .collect();
        let (version, first_position, last_position) = {
            let mut log = locked(&self.log);
            if let Some(claim) = claim
                && let Some((record, _)) = log.keys.get(&claim.key)
            {
                return Err(StoreError::KeyClaimed {
                    key: claim.key.clone(),
                    record: Box::new(record.clone()),
                });
            }
            let actual = Version(log.streams.get(stream).map_or(0, |indexes| indexes.len() as u64));
            if !expected.matches(actual) {
                return Err(StoreError::Conflict { stream: stream.clone(), expected, actual });
            }
            if let Some(stored) =
                recorded.iter().find(|e| log.event_ids.contains(&e.metadata.event_id))
            {
                return Err(StoreError::DuplicateEventId(stored.metadata.event_id));
            }
            let log = &mut *log;
            let first_index = log.events.len();
            let mut version = actual;
            for mut event in recorded {
                version = Version(version.0 + 1);
                let position = Position(log.events.len() as u64 + 1);
                let unshared = Arc::get_mut(&mut event).expect("made above and not yet shared");
                (unshared.version, unshared.position) = (version, position);
                log.event_ids.insert(event.metadata.event_id);
                log.events.push(event);
            }
            let appended = first_index..log.events.len();
            match log.streams.get_mut(stream) {
                Some(indexes) => indexes.extend(appended),
                None => {
                    log.streams.insert(stream.clone(), appended.collect());
                }
            }
            let last_position = Position(log.events.len() as u64);
            if let Some(claim) = claim {
                let appended = CommandOutcome {
                    stream: stream.clone(),
                    version,
                    position: Some(last_position),
                    replayed: false,
                };
                let record = IdempotencyRecord {
                    fingerprint: claim.fingerprint.clone(),
                    appended: Some(appended),
                    answer: None,
                };
                log.keys.insert(claim.key.clone(), (record, Utc::now()));
            }
            (version, Position(first_index as u64 + 1), last_position)
        };
        // Published after the lock, since waking the followers is work too; two appends may
        // publish out of order, so the head only moves forward.
        self.head.send_if_modified(|head| {
            let moved = last_position > *head;
            if moved {
                *head = last_position;
            }
            moved
        });
        Ok(AppendOutcome { version, first_position, last_position })
    }

    async fn read_claim(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(locked(&self.log).keys.get(key).map(|(record, _)| record.clone()))
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(locked(&self.log).snapshots.get(stream).cloned())
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let mut log = locked(&self.log);
        let stored = log.snapshots.entry(stream.clone()).or_insert_with(|| snapshot.clone());
        let other_format = stored.version == snapshot.version && stored.format != snapshot.format;
        if stored.version < snapshot.version || other_format {
            *stored = snapshot.clone();
        }
        Ok(())
    }

    async fn event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let log = locked(&self.log);
        let mut types: Vec<(String, u32)> =
            log.events.starting_at(0).map(|e| (e.event_type.clone(), e.schema_version)).collect();
        types.sort_unstable();
        types.dedup();
        Ok(types)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared: Vec<Arc<RecordedEvent>> = {
            let log = locked(&self.log);
            let Some(indexes) = log.streams.get(stream) else { return Ok(Vec::new()) };
            let skip = usize::try_from(after.0).unwrap_or(usize::MAX);
            indexes
                .iter()
                .skip(skip)
                .map(|&index| {
                    log.events.get(index).expect("a stream's indexes are in the log").clone()
                })
                .collect()
        };
        Ok(owned(shared))
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared: Vec<Arc<RecordedEvent>> = {
            let log = locked(&self.log);
            let skip = usize::try_from(after.0).unwrap_or(usize::MAX);
            log.events.starting_at(skip).take(limit).cloned().collect()
        };
        Ok(owned(shared))
    }

    async fn read_positions(
        &self,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut sorted: Vec<Position> = positions.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let shared: Vec<Arc<RecordedEvent>> = {
            let log = locked(&self.log);
            sorted
                .into_iter()
                .filter_map(|position| {
                    let index = usize::try_from(position.0).ok()?.checked_sub(1)?;
                    log.events.get(index).cloned()
                })
                .collect()
        };
        Ok(owned(shared))
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

/// A running or failed rebuild (its checkpoint is kept with the others).
struct Rebuild {
    started_at: DateTime<Utc>,
    version: u32,
    error: Option<String>,
}

#[derive(Default)]
struct ViewState {
    /// Instances by slot key, then id.
    views: HashMap<String, HashMap<String, MemoryView>>,
    /// Checkpoints by slot key.
    checkpoints: HashMap<String, Checkpoint>,
    /// Running or failed rebuilds by projection.
    rebuilds: HashMap<String, Rebuild>,
    /// Events waiting on parked instances, by slot key, then (id, position).
    parked_events: HashMap<String, BTreeMap<(String, Position), RecordedEvent>>,
    /// Skipped events by projection.
    skipped: HashMap<String, Vec<SkippedEvent>>,
    /// Table rows by the table's name in its slot, then key.
    tables: HashMap<String, HashMap<Vec<Value>, Vec<Value>>>,
    /// The definition version that built each projection's live views.
    versions: HashMap<String, u32>,
}

struct MemoryView {
    data: Vec<u8>,
    position: Position,
    parked: Option<Parking>,
}

impl InMemoryViewManager {
    /// An empty view manager.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ViewState {
    fn stored<V: DeserializeOwned>(
        &self,
        projection: &str,
        key: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let Some(found) = self.views.get(key).and_then(|views| views.get(id)) else {
            return Ok(None);
        };
        let view = decode_view(projection, id, &found.data)?;
        Ok(Some(StoredView { view, position: found.position, parked: found.parked.clone() }))
    }

    fn checkpoint(&self, key: &str) -> Checkpoint {
        self.checkpoints.get(key).copied().unwrap_or_default()
    }

    fn write(&mut self, key: &str, slot: Slot, commit: EncodedCommit) {
        let next = commit.next();
        let views = self.views.entry(key.to_owned()).or_default();
        for view in commit.views {
            match view.data {
                Some(data) => {
                    views.insert(
                        view.id,
                        MemoryView { data, position: view.position, parked: view.parked },
                    );
                }
                None => {
                    views.remove(&view.id);
                }
            }
        }
        let parked = self.parked_events.entry(key.to_owned()).or_default();
        for id in &commit.released {
            parked.retain(|(parked_id, _), _| parked_id != id);
        }
        for (id, event) in commit.parked_events {
            parked.insert((id, event.position), event);
        }
        for change in &commit.rows {
            let rows = self.tables.entry(slot.table(change.table().name)).or_default();
            table::apply_change(rows, change);
        }
        if !commit.skipped.is_empty() {
            let projection = key.trim_end_matches("#rebuild").to_owned();
            let skipped = self.skipped.entry(projection).or_default();
            for event in commit.skipped {
                if !skipped
                    .iter()
                    .any(|s| s.view_id == event.view_id && s.position == event.position)
                {
                    skipped.push(event);
                }
            }
        }
        self.checkpoints.insert(key.to_owned(), next);
    }
}

impl ViewManager for InMemoryViewManager {
    async fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> Result<u32, ViewError> {
        check_projection_name(projection)?;
        let mut state = locked(&self.state);
        if let Some(stored) =
            state.versions.get(projection).copied().filter(|stored| *stored != version)
        {
            return Ok(stored);
        }
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
            state.tables.entry(spec.name.to_owned()).or_default();
        }
        Ok(*state.versions.entry(projection.to_owned()).or_insert(version))
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        let key = slot.key(projection);
        let state = locked(&self.state);
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(stored) = state.stored(projection, &key, id)? {
                found.insert(id.clone(), stored);
            }
        }
        Ok(found)
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        locked(&self.state).stored(projection, projection, id)
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        Ok(locked(&self.state).checkpoint(&slot.key(projection)))
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        // Encoded before taking the lock, so that a codec error writes nothing.
        let encoded = encode_commit(projection, commit)?;
        let key = slot.key(projection);
        let mut state = locked(&self.state);
        Checkpoint::fence(&key, encoded.from, state.checkpoint(&key))?;
        state.write(&key, slot, encoded);
        Ok(())
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        let state = locked(&self.state);
        let key = slot.key(projection);
        let Some(views) = state.views.get(&key) else { return Ok(Vec::new()) };
        let waiting = state.parked_events.get(&key);
        let mut parked: Vec<ParkedInstance> = views
            .iter()
            .filter_map(|(id, view)| {
                let parking = view.parked.as_ref()?;
                let events = waiting.map_or(0, |w| w.keys().filter(|(i, _)| i == id).count());
                Some(ParkedInstance {
                    view_id: id.clone(),
                    position: parking.position,
                    events: events as u64,
                    error: parking.error.clone(),
                    attempts: parking.attempts,
                    parked_at: parking.parked_at,
                })
            })
            .collect();
        parked.sort_by(|a, b| (a.position, &a.view_id).cmp(&(b.position, &b.view_id)));
        Ok(parked)
    }

    async fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, ViewError> {
        let state = locked(&self.state);
        let Some(waiting) = state.parked_events.get(&slot.key(projection)) else {
            return Ok(Vec::new());
        };
        Ok(waiting.iter().filter(|((i, _), _)| i == id).map(|(_, event)| event.clone()).collect())
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        let mut skipped = locked(&self.state).skipped.get(projection).cloned().unwrap_or_default();
        skipped.sort_by_key(|s| s.skipped_at);
        Ok(skipped)
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        let state = locked(&self.state);
        let parked = state
            .views
            .get(projection)
            .map_or(0, |views| views.values().filter(|v| v.parked.is_some()).count() as u64);
        let rebuild = state.rebuilds.get(projection).map(|rebuild| RebuildRecord {
            checkpoint: state.checkpoint(&Slot::Rebuild.key(projection)),
            started_at: rebuild.started_at,
            error: rebuild.error.clone(),
            version: rebuild.version,
        });
        let version = state.versions.get(projection).copied().unwrap_or(0);
        Ok(ProjectionRecord { checkpoint: state.checkpoint(projection), version, parked, rebuild })
    }

    async fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        query.check(table).map_err(ViewError::InvalidTable)?;
        let state = locked(&self.state);
        let Some(rows) = state.tables.get(table.name) else { return Ok(Vec::new()) };
        Ok(query.run(table, rows.values().cloned()))
    }

    async fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Checkpoint, ViewError> {
        check_projection_name(projection)?;
        let mut state = locked(&self.state);
        if state.rebuilds.get(projection).is_some_and(|rebuild| rebuild.error.is_none()) {
            return Err(ViewError::RebuildInProgress(projection.to_owned()));
        }
        let key = Slot::Rebuild.key(projection);
        state.views.remove(&key);
        state.parked_events.remove(&key);
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
            state.tables.insert(Slot::Rebuild.table(spec.name), HashMap::new());
        }
        let checkpoint =
            Checkpoint { position: Position::START, revision: state.checkpoint(&key).revision + 1 };
        state.checkpoints.insert(key, checkpoint);
        state.rebuilds.insert(projection.to_owned(), Rebuild { started_at, version, error: None });
        Ok(checkpoint)
    }

    async fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> Result<(), ViewError> {
        let mut state = locked(&self.state);
        let key = Slot::Rebuild.key(projection);
        Checkpoint::fence(&key, at, state.checkpoint(&key))?;
        match state.rebuilds.get_mut(projection) {
            Some(rebuild) => {
                rebuild.error = Some(error.to_owned());
                Ok(())
            }
            None => Err(ViewError::NoRebuild(projection.to_owned())),
        }
    }

    async fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> Result<Checkpoint, ViewError> {
        let mut state = locked(&self.state);
        let key = Slot::Rebuild.key(projection);
        let version = match state.rebuilds.get(projection) {
            Some(Rebuild { error: None, version, .. }) => *version,
            _ => return Err(ViewError::NoRebuild(projection.to_owned())),
        };
        Checkpoint::fence(&key, rebuilt, state.checkpoint(&key))?;
        Checkpoint::fence(projection, live, state.checkpoint(projection))?;
        let views = state.views.remove(&key).unwrap_or_default();
        state.views.insert(projection.to_owned(), views);
        let parked = state.parked_events.remove(&key).unwrap_or_default();
        state.parked_events.insert(projection.to_owned(), parked);
        for spec in tables {
            let rows = state.tables.remove(&Slot::Rebuild.table(spec.name)).unwrap_or_default();
            state.tables.insert(spec.name.to_owned(), rows);
        }
        let swapped = live.next(rebuilt.position);
        state.checkpoints.insert(projection.to_owned(), swapped);
        state.checkpoints.remove(&key);
        state.rebuilds.remove(projection);
        state.versions.insert(projection.to_owned(), version);
        Ok(swapped)
    }
}

impl IdempotencyStore for InMemoryEventStore {
    async fn put_answer(
        &self,
        key: &str,
        fingerprint: &str,
        answer: Vec<u8>,
    ) -> Result<(), IdempotencyError> {
        let record = IdempotencyRecord {
            fingerprint: fingerprint.to_owned(),
            appended: None,
            answer: Some(answer),
        };
        locked(&self.log).keys.entry(key.to_owned()).or_insert((record, Utc::now()));
        Ok(())
    }

    async fn expire(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, IdempotencyError> {
        let mut log = locked(&self.log);
        let old: Vec<String> = log
            .keys
            .iter()
            .filter(|(_, (_, made))| *made < before)
            .take(limit)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &old {
            log.keys.remove(key);
        }
        Ok(old.len() as u64)
    }
}

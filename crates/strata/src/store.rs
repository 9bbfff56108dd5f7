//! The [`EventStore`] contract: append with an expected version, read one stream, read the
//! whole log after a position, and be told about new commits without polling.
//!
//! Every backend runs `strata_testkit::event_store_contract` to prove it keeps these promises:
//! all events of one append commit together or none do; a stale expected version fails with
//! [`StoreError::Conflict`] and writes nothing; positions strictly increase in commit order.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::IdempotencyClaim;
use crate::event::{NewEvent, RecordedEvent};
use crate::snapshot::Snapshot;
use crate::stream::{ExpectedVersion, Position, StreamId, Version};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the append.
    pub version: Version,
    /// The global position of the first appended event.
    pub first_position: Position,
    /// The global position of the last appended event.
    pub last_position: Position,
}

/// Why an event store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error("version conflict on stream {stream}: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked.
        actual: Version,
    },
    /// The append held no events; stores refuse it so that every append moves the log.
    #[error("append to stream {0} holds no events")]
    EmptyAppend(StreamId),
    /// The idempotency key of a claimed append has a record already; nothing was written.
    #[error("idempotency key {key:?} was used before; nothing was written")]
    KeyClaimed {
        /// The key.
        key: String,
        /// What the key's record holds.
        record: Box<crate::IdempotencyRecord>,
    },
    /// An event id already exists in the store; nothing was written.
    #[error("event id {0} is already stored")]
    DuplicateEventId(uuid::Uuid),
    /// An event's `recorded_at` is outside what the store can keep exactly (SQL stores keep
    /// nanoseconds since 1970 in 64 bits: the years 1677 to 2262); nothing was written.
    #[error("recorded_at {0} is outside the years 1677 to 2262, which the store can hold")]
    UnstorableTime(chrono::DateTime<chrono::Utc>),
    /// A stored row could not be read back as an event.
    #[error("stored event is corrupt: {0}")]
    Corrupt(String),
    /// The store has shut down and takes no more work.
    #[error("the event store has shut down")]
    Closed,
    /// The store stopped answering while committing this append, and did not answer again
    /// in time to tell whether the commit happened: the events may or may not be written.
    /// A retry under the same idempotency key acts at most once.
    #[error("the event store stopped answering while committing; the append may be written: {0}")]
    OutcomeUnknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed (I/O, driver, database server).
    #[error("event store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Counters of a store that commits appends in groups, for metrics and benchmarks. All
/// counts are totals since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitMetrics {
    /// Transactions committed; each is synced to disk before it is answered (except in a
    /// store that keeps a copy of a log kept elsewhere, such as a replica's).
    pub groups: u64,
    /// Appends answered, whether they committed or were refused.
    pub appends: u64,
    /// Events written.
    pub events: u64,
    /// The largest group so far.
    pub largest_group: u64,
    /// Time from the start of each group's writing to its answer (its sync included), summed
    /// over groups, in microseconds. On SQLite a group is written while the one before it
    /// syncs, so the sum can run ahead of the clock.
    pub busy_micros: u64,
    /// Groups by their number of appends: `group_sizes[i]` counts the groups of at most
    /// [`GROUP_SIZE_BOUNDS`]`[i]` appends (and more than the bound before); the last counts
    /// the larger ones.
    pub group_sizes: [u64; GROUP_SIZE_BOUNDS.len() + 1],
    /// Groups that failed: their appends were answered with an error (on PostgreSQL, one
    /// whose commit went unanswered may still have been written).
    pub failed_groups: u64,
}

/// The store's writes are failing: its last group commit failed and none that wrote events
/// has committed since. Reads may still answer (a full disk refuses writes only), so a read
/// alone would not show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// Why the last group failed, as the backend said.
    pub error: String,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Groups failed in a row up to it.
    pub groups: u64,
}

/// The upper bounds of the group-size buckets of [`GroupCommitMetrics::group_sizes`].
pub const GROUP_SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

impl GroupCommitMetrics {
    /// Appends per group on average.
    pub fn mean_group_size(&self) -> f64 {
        self.appends as f64 / self.groups.max(1) as f64
    }

    /// Time per group on average, in milliseconds.
    pub fn mean_group_ms(&self) -> f64 {
        self.busy_micros as f64 / 1000.0 / self.groups.max(1) as f64
    }
}

/// The counters behind [`GroupCommitMetrics`]: written by a store's writer after each group,
/// in the order the groups are answered, read by anyone; only the last failure is behind a
/// lock (taken once per group, uncontended but for `/health`).
#[derive(Debug, Default)]
pub struct GroupCommitCounters {
    groups: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
    largest_group: AtomicU64,
    busy_micros: AtomicU64,
    group_sizes: [AtomicU64; GROUP_SIZE_BOUNDS.len() + 1],
    failed_groups: AtomicU64,
    failure: Mutex<Option<WriteFailure>>,
}

impl GroupCommitCounters {
    /// Records one group of `appends` appends that wrote `events` events in `busy`.
    pub fn record(&self, appends: usize, events: u64, busy: Duration) {
        let micros = u64::try_from(busy.as_micros()).unwrap_or(u64::MAX);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.appends.fetch_add(appends as u64, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.largest_group.fetch_max(appends as u64, Ordering::Relaxed);
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
        let bucket = GROUP_SIZE_BOUNDS
            .iter()
            .position(|bound| appends as u64 <= *bound)
            .unwrap_or(GROUP_SIZE_BOUNDS.len());
        self.group_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        // Only a group that wrote events proves the writes work again: one that committed
        // nothing new (an expiry that found no key, every append refused) writes no page,
        // and commits on a full disk too.
        if events > 0 {
            *self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
    }

    /// Records a group that failed with `error`; [`Self::failure`] reports it until a
    /// group that writes events commits. Call this and [`Self::record`] in the order of the
    /// groups, or an earlier group's success clears a later failure.
    pub fn record_failure(&self, error: &dyn std::fmt::Display) {
        self.failed_groups.fetch_add(1, Ordering::Relaxed);
        let mut failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let groups = failure.as_ref().map_or(0, |earlier| earlier.groups) + 1;
        *failure = Some(WriteFailure { error: error.to_string(), at: Utc::now(), groups });
    }

    /// The failure the writes are in, if the last group failed.
    pub fn failure(&self) -> Option<WriteFailure> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> GroupCommitMetrics {
        GroupCommitMetrics {
            groups: self.groups.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            largest_group: self.largest_group.load(Ordering::Relaxed),
            busy_micros: self.busy_micros.load(Ordering::Relaxed),
            group_sizes: std::array::from_fn(|i| self.group_sizes[i].load(Ordering::Relaxed)),
            failed_groups: self.failed_groups.load(Ordering::Relaxed),
        }
    }
}

/// The checks every append gets before any store work: it holds events, and no event id
/// repeats within it. Backends call this first, so they all refuse the same way.
pub fn check_append(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend(stream.clone()));
    }
    // Commands almost always emit one event; only longer appends need the set.
    if events.len() > 1 {
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for event in events {
            if !ids.insert(event.metadata.event_id) {
                return Err(StoreError::DuplicateEventId(event.metadata.event_id));
            }
        }
    }
    Ok(())
}

/// An append-only log of events, ordered per stream by version and overall by position.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if the stream is at `expected`, all or nothing.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send {
        self.append_claimed(stream, expected, events, None)
    }

    /// Appends like [`append`](Self::append) and, with a `claim`, records its key, with where
    /// the events went, in the same transaction: after a crash both exist or neither does.
    /// When the key has a record already, nothing is written and the error
    /// [`StoreError::KeyClaimed`] carries that record.
    fn append_claimed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        claim: Option<&IdempotencyClaim>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// The idempotency record of `key`, as [`append_claimed`](Self::append_claimed) or an
    /// answer stored for a refusal left it.
    fn read_claim(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<crate::IdempotencyRecord>, StoreError>> + Send;

    /// Every (event type, schema version) pair the log holds, once each, in no particular
    /// order: what a start-up check needs to know the code can read the whole log. It reads
    /// the whole log on the SQL stores (no index pays for itself on the write path).
    fn event_types(&self) -> impl Future<Output = Result<Vec<(String, u32)>, StoreError>> + Send;

    /// The snapshot stored for `stream`, if any.
    fn read_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores `snapshot` for `stream`, replacing an older one, or one of the same version in
    /// another format; a stored snapshot of a higher version is kept (two writers racing
    /// leave the newer).
    fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The events of `stream` with a version above `after`, oldest first.
    fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Up to `limit` events with a position above `after`, in position order.
    fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The events at `positions`, in position order; positions that hold no event are
    /// left out. Each is found by its position (the log's primary key), never by a scan.
    fn read_positions(
        &self,
        positions: &[Position],
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The position of the last committed event readers can see.
    fn head(&self) -> Position {
        *self.subscribe().borrow()
    }

    /// A receiver that changes whenever new events commit; its value is the head position.
    /// Followers wait on it instead of polling.
    fn subscribe(&self) -> watch::Receiver<Position>;

    /// Group-commit counters, for stores that commit appends in groups.
    fn group_commit_metrics(&self) -> Option<GroupCommitMetrics> {
        None
    }

    /// Whether the store's writes are failing now (see [`WriteFailure`]), for `/health`.
    fn write_failure(&self) -> Option<WriteFailure> {
        None
    }
}

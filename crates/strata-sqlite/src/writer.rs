//! The event store's write path: one thread that owns the only write connection to
//! `events.sqlite` and commits appends (and the idempotency records that go with them) in
//! groups.
//!
//! Group commit: the thread blocks for the first pending request, then takes every request
//! already waiting (never waiting for more), checks and writes each one inside its own
//! savepoint of a single transaction, commits once and hands the group, with each
//! caller's own result, to the durability thread (`durability.rs`), which syncs the log
//! (one fsync for the group, or for several) and answers. A request that fails its checks
//! is rolled back alone; the rest of the group commits. Because this thread is the only
//! writer, positions are dense and in commit order (invariant 3), and the expected-version
//! check is a plain read inside the transaction.
//!
//! It is a `std::thread` rather than a tokio task because every step blocks on SQLite and
//! the disk; a task would hold a runtime worker for the whole commit.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::OptionalExtension;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use strata::{
    AppendOutcome, CommandOutcome, ExpectedVersion, GroupCommitCounters, IdempotencyRecord,
    Position, StoreError, StreamId, Version,
};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::durability::{
    self, Committed, FailedGroup, Group, PendingSyncs, SYNC_WAIT, SyncFailed, SyncFailure, SyncLog,
};
use crate::error::{from_sql_integer, to_sql_integer};

/// The most requests one group commits. It bounds the time the first caller of a group
/// waits behind the others and the size of one transaction; under heavier load the next
/// group starts right away.
const MAX_BATCH: usize = 1000;

const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM events \
     WHERE aggregate_type = ?1 AND aggregate_id = ?2";
const INSERT_EVENT: &str = "INSERT INTO events (position, aggregate_type, aggregate_id, version, \
     event_type, schema_version, payload, event_id, correlation_id, causation_id, user_id, \
     recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
const EVENT_ID_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM events WHERE event_id = ?1)";
pub(crate) const HEAD: &str = "SELECT COALESCE(MAX(position), 0) FROM events";
const CLAIM_KEY: &str = "INSERT INTO idempotency (key, fingerprint, aggregate_type, aggregate_id, \
     version, position, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (key) DO NOTHING";
pub(crate) const SELECT_KEY: &str = "SELECT fingerprint, aggregate_type, aggregate_id, version, \
     position, answer FROM idempotency WHERE key = ?1";
// The first record for a key wins; a later answer for it is not an error, it just loses.
const PUT_ANSWER: &str = "INSERT INTO idempotency (key, fingerprint, answer, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO NOTHING";
// The newer snapshot wins, whatever order writes arrive in; at the same version a new format
// replaces an old one, or a final stream would keep an unreadable snapshot for good.
const WRITE_SNAPSHOT: &str = "INSERT INTO snapshots (aggregate_type, aggregate_id, version, \
     format, state) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (aggregate_type, aggregate_id) \
     DO UPDATE SET version = excluded.version, format = excluded.format, state = excluded.state \
     WHERE snapshots.version < excluded.version \
     OR (snapshots.version = excluded.version AND snapshots.format <> excluded.format)";
const EXPIRE_KEYS: &str = "DELETE FROM idempotency WHERE key IN \
     (SELECT key FROM idempotency WHERE created_at < ?1 LIMIT ?2)";

/// An event encoded for its row, prepared by the caller so that the writer only writes.
pub(crate) struct EventRow {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) correlation_id: String,
    pub(crate) causation_id: Option<String>,
    pub(crate) user_id: Option<String>,
    /// Unix time in nanoseconds.
    pub(crate) recorded_at: i64,
}

/// What the writer thread is asked to do.
pub(crate) enum WriteRequest {
    Append(AppendRequest),
    /// Store the answer to a request that appended nothing, unless its key has a record.
    Answer(AnswerRequest),
    /// Forget idempotency keys recorded before a time.
    Expire(ExpireRequest),
    /// Store an aggregate's snapshot unless a newer one is stored.
    Snapshot(SnapshotRequest),
}

pub(crate) struct SnapshotRequest {
    pub(crate) stream: StreamId,
    pub(crate) snapshot: strata::Snapshot,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// One caller's append and where to send its answer.
pub(crate) struct AppendRequest {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    /// Never empty: the caller refuses empty appends before sending.
    pub(crate) events: Vec<EventRow>,
    /// The idempotency key to record in the same transaction.
    pub(crate) claim: Option<ClaimRow>,
    pub(crate) answer: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// An idempotency key claimed by an append.
pub(crate) struct ClaimRow {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    /// Unix time in nanoseconds.
    pub(crate) created_at: i64,
}

pub(crate) struct AnswerRequest {
    pub(crate) claim: ClaimRow,
    pub(crate) answer: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(crate) struct ExpireRequest {
    /// Unix time in nanoseconds.
    pub(crate) before: i64,
    pub(crate) limit: i64,
    pub(crate) reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// What the writer did for one request of a committed group.
pub(crate) enum Done {
    Append(Result<AppendOutcome, StoreError>),
    Answer,
    Expired(u64),
    Snapshot,
}

impl WriteRequest {
    /// Tells the caller; a caller that stopped waiting has nobody to tell.
    pub(crate) fn reply(self, done: Done) {
        match (self, done) {
            (Self::Append(request), Done::Append(outcome)) => {
                let _ = request.answer.send(outcome);
            }
            (Self::Answer(request), Done::Answer) => {
                let _ = request.reply.send(Ok(()));
            }
            (Self::Expire(request), Done::Expired(count)) => {
                let _ = request.reply.send(Ok(count));
            }
            (Self::Snapshot(request), Done::Snapshot) => {
                let _ = request.reply.send(Ok(()));
            }
            (request, _) => request.fail(StoreError::Corrupt("writer mixed up its replies".into())),
        }
    }

    pub(crate) fn fail(self, error: StoreError) {
        match self {
            Self::Append(request) => {
                let _ = request.answer.send(Err(error));
            }
            Self::Answer(request) => {
                let _ = request.reply.send(Err(error));
            }
            Self::Expire(request) => {
                let _ = request.reply.send(Err(error));
            }
            Self::Snapshot(request) => {
                let _ = request.reply.send(Err(error));
            }
        }
    }
}

/// How many streams each generation of [`StreamVersions`] remembers.
const VERSIONS_PER_GENERATION: usize = 50_000;

/// The current version of recently written streams, so that checking an append's expected
/// version needs no query. The writer is the file's only writer (the store holds an
/// exclusive lock file), so a remembered version is exact; a stream not remembered is
/// looked up. Two generations bound the memory: when the young one is full it becomes the
/// old one and the previous old one is forgotten, which keeps recently used streams.
#[derive(Default)]
struct StreamVersions {
    young: HashMap<StreamId, Version>,
    old: HashMap<StreamId, Version>,
}

impl StreamVersions {
    fn get(&self, stream: &StreamId) -> Option<Version> {
        self.young.get(stream).or_else(|| self.old.get(stream)).copied()
    }

    fn set(&mut self, stream: StreamId, version: Version) {
        if self.young.len() >= VERSIONS_PER_GENERATION && !self.young.contains_key(&stream) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(stream, version);
    }
}

/// Starts the writer thread and, beside it, the durability thread that syncs and answers
/// what it commits. The writer runs until every sender of `requests` is dropped, finishing
/// the requests already sent; it then waits for their syncs.
pub(crate) fn spawn(
    connection: Connection,
    head: Position,
    published: watch::Sender<Position>,
    sync: SyncLog,
    metrics: Arc<GroupCommitCounters>,
    requests: mpsc::Receiver<WriteRequest>,
) -> std::io::Result<JoinHandle<()>> {
    let failure = SyncFailure::default();
    let pending = Arc::new(PendingSyncs::default());
    let (groups, to_sync) = mpsc::channel();
    let durability = durability::spawn(
        sync,
        published,
        metrics.clone(),
        failure.clone(),
        pending.clone(),
        to_sync,
    )?;
    let writer = Writer {
        connection,
        head,
        groups,
        failure,
        pending,
        metrics,
        versions: StreamVersions::default(),
    };
    std::thread::Builder::new().name("strata-sqlite-writer".to_owned()).spawn(move || {
        writer.run(requests);
        if durability.join().is_err() {
            tracing::error!("the event log's sync thread panicked");
        }
    })
}

struct Writer {
    /// The only connection that writes `events.sqlite`.
    connection: Connection,
    /// The position of the last committed event, durable or not yet. Kept here rather than
    /// queried per group: nothing else writes the file.
    head: Position,
    /// Where groups go to be synced and answered, in order.
    groups: mpsc::Sender<Group>,
    /// Set when a sync failed: no more groups are written.
    failure: SyncFailure,
    /// Groups sent and not yet synced.
    pending: Arc<PendingSyncs>,
    metrics: Arc<GroupCommitCounters>,
    /// Versions of streams as committed; updated only after a group commits.
    versions: StreamVersions,
}

/// Why a whole group failed: the transaction did not commit, so none of it was written.
#[derive(Debug, thiserror::Error)]
#[error("the group commit holding this append failed, nothing of it was written: {0}")]
pub(crate) struct GroupFailed(#[source] pub(crate) Arc<rusqlite::Error>);

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        let mut group = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = requests.recv() {
            group.push(first);
            // Take what is already waiting, without sleeping for more: a lone request
            // commits at once, and under load the groups grow by themselves.
            while group.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group, &requests);
        }
        tracing::debug!("event store writer stopped: the store was dropped");
        // Dropping `self` closes the durability thread's channel once it has the last group.
    }

    /// Writes and commits `group` and sends it to be synced and answered; empties it.
    fn commit_group(
        &mut self,
        group: &mut Vec<WriteRequest>,
        requests: &mpsc::Receiver<WriteRequest>,
    ) {
        if let Some(error) = self.failure.get().cloned() {
            self.refuse(group, &error);
            return;
        }
        let started = Instant::now();
        let mut late = Vec::new();
        let written = self.write_group(group, &mut late, requests);
        group.append(&mut late);
        match written {
            Ok(Written::Withheld(error)) => self.refuse(group, &error),
            Ok(Written::Committed(outcomes, head)) => {
                let events = head.0 - self.head.0;
                self.head = head;
                let group = std::mem::take(group);
                self.send(Group::Committed(Committed { group, outcomes, head, events, started }));
            }
            Err(error) => {
                tracing::error!(%error, requests = group.len(), "event store group commit failed");
                // Whatever made the group fail may have been a version the cache got wrong;
                // forgetting costs one lookup per stream, keeping a wrong one fails groups.
                self.versions = StreamVersions::default();
                // Answered after the groups before it, so that callers, and the failure that
                // /health shows, hear of the groups in their order.
                let failed = FailedGroup { group: std::mem::take(group), error: Arc::new(error) };
                self.send(Group::Failed(failed));
                // The transaction rolled back, so the head is unchanged; but a failed
                // commit is the one place where that is worth checking, not assuming.
                match self.connection.query_row(HEAD, [], |row| row.get::<_, i64>(0)) {
                    Ok(head) => match from_sql_integer(head, "position") {
                        Ok(head) => self.head = Position(head),
                        Err(error) => tracing::error!(%error, "cannot re-read the head"),
                    },
                    Err(error) => tracing::error!(%error, "cannot re-read the head"),
                }
            }
        }
    }

    /// Sends `group` to be synced and answered in its turn. Should the durability thread be
    /// gone (it stops only after this thread, so it panicked), answers it here and stops
    /// writes: a committed group is in the file but not known to be on disk, and no later one
    /// would be.
    fn send(&self, group: Group) {
        self.pending.sent();
        let Err(mpsc::SendError(group)) = self.groups.send(group) else { return };
        self.pending.synced(1);
        let stopped = Arc::new(std::io::Error::other("the event log's sync thread stopped"));
        let error = Arc::clone(self.failure.get_or_init(|| stopped));
        match group {
            Group::Committed(committed) => {
                durability::answer_unknown(&self.metrics, committed, &error)
            }
            Group::Failed(failed) => durability::answer_refused(&self.metrics, failed),
        }
    }

    /// Refuses every request of `group`, after a sync failed: the store takes no more writes.
    fn refuse(&self, group: &mut Vec<WriteRequest>, error: &Arc<std::io::Error>) {
        self.metrics.record_failure(&SyncFailed(Arc::clone(error)));
        for request in group.drain(..) {
            request.fail(StoreError::Backend(Box::new(SyncFailed(Arc::clone(error)))));
        }
    }

    /// Writes every request of `group` in one transaction, then those that arrive while the
    /// previous group is being synced, taken into `late` (the caller adds them to the group
    /// whatever happens). The outer error means the transaction failed and nothing was
    /// written; otherwise each request has its own outcome.
    fn write_group<'a>(
        &mut self,
        group: &'a [WriteRequest],
        late: &'a mut Vec<WriteRequest>,
        requests: &mpsc::Receiver<WriteRequest>,
    ) -> rusqlite::Result<Written> {
        let mut head = self.head;
        // Versions written by this group, visible to its later requests but remembered in
        // `self.versions` only once the group has committed.
        let mut written: HashMap<&'a StreamId, Version> = HashMap::new();
        // IMMEDIATE takes the write lock up front, so the transaction cannot fail halfway
        // with SQLITE_BUSY if another process has the file open.
        let transaction =
            self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group {
            let done =
                write_request(&transaction, request, &self.versions, &mut written, &mut head)?;
            outcomes.push(done);
        }
        // Committing while the previous group is still being synced would only make this
        // one wait for a sync of its own: take in what arrives meanwhile instead, so that
        // one sync covers more.
        self.pending.wait_until_synced(SYNC_WAIT);
        if let Some(error) = self.failure.get() {
            // Dropping the transaction rolls it back: these callers learn that nothing of
            // theirs was written, rather than that it is unknown.
            return Ok(Written::Withheld(Arc::clone(error)));
        }
        late.extend(requests.try_iter().take(MAX_BATCH.saturating_sub(group.len())));
        let late: &'a [WriteRequest] = late;
        for request in late {
            let done =
                write_request(&transaction, request, &self.versions, &mut written, &mut head)?;
            outcomes.push(done);
        }
        transaction.commit()?;
        for (stream, version) in written {
            self.versions.set(stream.clone(), version);
        }
        Ok(Written::Committed(outcomes, head))
    }
}

/// What became of a group the writer wrote.
enum Written {
    /// Committed: each request's outcome, and the head after the group.
    Committed(Vec<Done>, Position),
    /// Rolled back, because a sync failed while the group waited to commit.
    Withheld(Arc<std::io::Error>),
}

/// Writes one request of a group. The error is a driver failure that fails the whole group.
fn write_request<'a>(
    transaction: &Transaction<'_>,
    request: &'a WriteRequest,
    versions: &StreamVersions,
    written: &mut HashMap<&'a StreamId, Version>,
    head: &mut Position,
) -> rusqlite::Result<Done> {
    let request = match request {
        WriteRequest::Append(request) => request,
        WriteRequest::Answer(request) => {
            let claim = &request.claim;
            transaction.prepare_cached(PUT_ANSWER)?.execute(params![
                claim.key,
                claim.fingerprint,
                request.answer,
                claim.created_at
            ])?;
            return Ok(Done::Answer);
        }
        WriteRequest::Snapshot(request) => {
            let (stream, snapshot) = (&request.stream, &request.snapshot);
            transaction.prepare_cached(WRITE_SNAPSHOT)?.execute(params![
                stream.aggregate_type,
                stream.id,
                to_sql_integer(snapshot.version.0)?,
                snapshot.format,
                snapshot.state,
            ])?;
            return Ok(Done::Snapshot);
        }
        WriteRequest::Expire(request) => {
            let count = transaction
                .prepare_cached(EXPIRE_KEYS)?
                .execute(params![request.before, request.limit])?;
            return Ok(Done::Expired(count as u64));
        }
    };
    let stream = &request.stream;
    let actual = match written.get(stream).copied().or_else(|| versions.get(stream)) {
        Some(version) => version,
        None => current_version(transaction, stream)?,
    };
    let outcome = append_one(transaction, request, actual, *head)?;
    if let Ok(appended) = &outcome {
        *head = appended.last_position;
        written.insert(stream, appended.version);
    }
    Ok(Done::Append(outcome))
}

/// The version of `stream` as stored.
fn current_version(transaction: &Transaction<'_>, stream: &StreamId) -> rusqlite::Result<Version> {
    let actual: i64 = transaction
        .prepare_cached(CURRENT_VERSION)?
        .query_row(params![stream.aggregate_type, stream.id], |row| row.get(0))?;
    u64::try_from(actual)
        .map(Version)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, actual))
}

/// Checks and writes one request after `head`, on a stream at version `actual`. The outer
/// error is a driver failure that fails the whole group; the inner one is this request's own
/// refusal, which writes nothing and leaves the group going.
fn append_one(
    transaction: &Transaction<'_>,
    request: &AppendRequest,
    actual: Version,
    head: Position,
) -> rusqlite::Result<Result<AppendOutcome, StoreError>> {
    let stream = &request.stream;
    // Checked before drawing positions, so a losing append leaves no hole (DESIGN 4.2).
    if !request.expected.matches(actual) {
        return Ok(Err(StoreError::Conflict {
            stream: stream.clone(),
            expected: request.expected,
            actual,
        }));
    }

    let count = request.events.len() as u64;
    let outcome = AppendOutcome {
        version: Version(actual.0 + count),
        first_position: Position(head.0 + 1),
        last_position: Position(head.0 + count),
    };

    // A failed INSERT undoes itself (SQLite rolls back the statement, not the transaction),
    // so a single row needs no savepoint; several do, to undo the ones already inserted
    // when a later one is refused. The savepoint statements are cached: parsing them per
    // append cost more than the inserts.
    let several = request.events.len() > 1 || request.claim.is_some();
    if several {
        transaction.prepare_cached("SAVEPOINT append")?.execute([])?;
    }
    let written = match &request.claim {
        Some(claim) => match claim_key(transaction, claim, stream, &outcome) {
            Ok(None) => insert_events(transaction, request, actual, head),
            Ok(Some(record)) => {
                Ok(Err(StoreError::KeyClaimed { key: claim.key.clone(), record: Box::new(record) }))
            }
            Err(error) => Err(error),
        },
        None => insert_events(transaction, request, actual, head),
    };
    if several {
        if !matches!(written, Ok(Ok(()))) {
            transaction.prepare_cached("ROLLBACK TO append")?.execute([])?;
        }
        transaction.prepare_cached("RELEASE append")?.execute([])?;
    }
    match written? {
        Ok(()) => Ok(Ok(outcome)),
        Err(refused) => Ok(Err(refused)),
    }
}

/// Records `claim` for the append that lands at `outcome`; when the key has a record
/// already, returns it and writes nothing.
fn claim_key(
    transaction: &Transaction<'_>,
    claim: &ClaimRow,
    stream: &StreamId,
    outcome: &AppendOutcome,
) -> rusqlite::Result<Option<IdempotencyRecord>> {
    let inserted = transaction.prepare_cached(CLAIM_KEY)?.execute(params![
        claim.key,
        claim.fingerprint,
        stream.aggregate_type,
        stream.id,
        to_sql_integer(outcome.version.0)?,
        to_sql_integer(outcome.last_position.0)?,
        claim.created_at,
    ])?;
    if inserted == 1 {
        return Ok(None);
    }
    transaction.prepare_cached(SELECT_KEY)?.query_row([&claim.key], read_record).optional()
}

fn unsigned(value: i64, column: usize) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, value))
}

/// An idempotency record from a row of [`SELECT_KEY`].
pub(crate) fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<IdempotencyRecord> {
    let aggregate_type: Option<String> = row.get(1)?;
    let aggregate_id: Option<String> = row.get(2)?;
    let version: Option<i64> = row.get(3)?;
    let position: Option<i64> = row.get(4)?;
    let appended = match (aggregate_type, aggregate_id, version, position) {
        (Some(aggregate_type), Some(id), Some(version), Some(position)) => Some(CommandOutcome {
            stream: StreamId::new(aggregate_type, id),
            version: Version(unsigned(version, 3)?),
            position: Some(Position(unsigned(position, 4)?)),
            replayed: false,
        }),
        _ => None,
    };
    Ok(IdempotencyRecord { fingerprint: row.get(0)?, appended, answer: row.get(5)? })
}

/// Inserts the request's events; the inner error names an event id that is already stored.
fn insert_events(
    transaction: &Transaction<'_>,
    request: &AppendRequest,
    actual: Version,
    head: Position,
) -> rusqlite::Result<Result<(), StoreError>> {
    let stream = &request.stream;
    let mut insert = transaction.prepare_cached(INSERT_EVENT)?;
    for (offset, event) in (1..).zip(&request.events) {
        let inserted = insert.execute(params![
            to_sql_integer(head.0 + offset)?,
            stream.aggregate_type,
            stream.id,
            to_sql_integer(actual.0 + offset)?,
            event.event_type,
            event.schema_version,
            event.payload,
            event.event_id.as_bytes().as_slice(),
            event.correlation_id,
            event.causation_id,
            event.user_id,
            event.recorded_at,
        ]);
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                // Only a stored (or repeated) event id is this request's fault; any other
                // unique violation means the file changed under the writer.
                let exists: bool = transaction
                    .prepare_cached(EVENT_ID_EXISTS)?
                    .query_row([event.event_id.as_bytes().as_slice()], |row| row.get(0))?;
                if !exists {
                    return Err(error);
                }
                return Ok(Err(StoreError::DuplicateEventId(event.event_id)));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Ok(()))
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    error.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

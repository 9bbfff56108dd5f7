//! [`SqliteEventStore`]: the event log in `events.sqlite`.
//!
//! Appends are sent to the writer thread (`writer.rs`), which commits them in groups;
//! reads run on a small pool of read-only connections on tokio's blocking pool, so they
//! never wait for a commit (WAL). This module holds the handle, the reads and the mapping
//! between rows and events; it holds no write SQL.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use chrono::DateTime;
use rusqlite::{OptionalExtension, Row, params};
use strata::{
    AppendOutcome, EventMetadata, EventStore, ExpectedVersion, GroupCommitMetrics,
    IdempotencyClaim, IdempotencyError, IdempotencyRecord, IdempotencyStore, NewEvent, Position,
    RecordedEvent, Snapshot, StoreError, StreamId, Version,
};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::durability::{self, SyncLog};
use crate::error::{DbError, SqliteError, from_sql_integer};
use crate::pool::ReadPool;
use crate::schema;
use crate::writer::{
    self, AnswerRequest, AppendRequest, ClaimRow, EventRow, ExpireRequest, SnapshotRequest,
    WriteRequest,
};

/// The columns [`decode`] reads, in its order; a macro so that queries can `concat!` it.
macro_rules! columns {
    () => {
        "position, aggregate_type, aggregate_id, version, event_type, schema_version, payload, \
         event_id, correlation_id, causation_id, user_id, recorded_at"
    };
}

/// A whole stream, up to the durable head (`?3`). Deliberately without a range on
/// `version` or an ORDER BY: the rows come in index order anyway; they are sorted in Rust
/// to not depend on it.
const READ_WHOLE_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND position <= ?3"
);
/// The tail of a stream after a version, up to the durable head.
const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version > ?3 \
     AND position <= ?4 ORDER BY version"
);
const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE position > ?1 AND position <= ?3 ORDER BY position LIMIT ?2"
);

/// Events by position, up to the durable head: the positions come as one JSON array, so
/// that any number of them is one prepared statement; each is found through the log's
/// primary key.
const READ_POSITIONS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE position IN (SELECT value FROM json_each(?1)) AND position <= ?2 \
     ORDER BY position"
);

const READ_SNAPSHOT: &str = "SELECT version, format, state FROM snapshots \
     WHERE aggregate_type = ?1 AND aggregate_id = ?2";
const EVENT_TYPES: &str = "SELECT DISTINCT event_type, schema_version FROM events";

/// An [`EventStore`] on SQLite: `events.sqlite` in the directory it is opened on.
///
/// Clones share one store. When the last clone is dropped the writer thread finishes the
/// appends already sent and stops, and the drop waits for it and for their syncs (at most a
/// group commit or two), so the directory can be opened again at once.
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` only while dropping: closing the channel is what stops the writer.
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    /// The newest durable position, where reads stop.
    head: watch::Receiver<Position>,
    readers: ReadPool,
    metrics: Arc<strata::GroupCommitCounters>,
    /// Held while the store is open for writing: the writer thread keeps the head and
    /// stream versions in memory, which is only right while it is the file's one writer.
    _lock: Option<std::fs::File>,
}

impl SqliteEventStore {
    /// Opens (or creates) the store in `dir/events.sqlite`, creating `dir` if missing,
    /// migrating the schema and starting the writer thread.
    ///
    /// This blocks on file I/O; call it at startup, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, SqliteError> {
        // An answered append survives a power cut (invariant 5).
        Self::open_with(dir, durability::write_ahead_log)
    }

    /// [`open`](Self::open) for a copy of a log kept elsewhere (a read replica's, filled by
    /// a follower): commits are not synced to disk one by one. A power cut may lose the
    /// newest events, which the follower then copies again from its head; a crash of the
    /// process loses nothing. Appends that wait for each other in turn (a follower's) then
    /// cost no fsync each.
    pub fn open_copy(dir: &Path) -> Result<Self, SqliteError> {
        Self::open_with(dir, |_| Box::new(|| Ok(())))
    }

    /// Opens the store in `dir`, with `sync` making the file's commits durable.
    pub(crate) fn open_with(
        dir: &Path,
        sync: impl FnOnce(&Path) -> SyncLog,
    ) -> Result<Self, SqliteError> {
        let lock = lock_for_writing(dir)?;
        let (connection, path) = schema::open_writer(dir, &schema::EVENTS)?;
        // Commits do not sync the log themselves: the durability thread does, beside the
        // writer, before anything committed is answered or read (`durability.rs`).
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|source| SqliteError::Open { path: path.clone(), source })?;
        // SQLite's own name for the file (a symlink followed), beside which it keeps the log.
        let resolved = connection.path().filter(|name| !name.is_empty()).map(PathBuf::from);
        let mut sync = sync(resolved.as_deref().unwrap_or(&path));
        // Groups that a killed process committed but never synced are in the file: put them
        // on disk before the head that includes them is read and published.
        sync().map_err(|source| SqliteError::Sync { path: path.clone(), source })?;
        let head: i64 = connection
            .query_row(writer::HEAD, [], |row| row.get(0))
            .map_err(|source| SqliteError::Open { path: path.clone(), source })?;
        let head = Position(u64::try_from(head).unwrap_or(0));
        let (published, head_receiver) = watch::channel(head);
        let (requests, received) = mpsc::channel();
        let metrics = Arc::new(strata::GroupCommitCounters::default());
        let writer = writer::spawn(connection, head, published, sync, metrics.clone(), received)
            .map_err(SqliteError::WriterThread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: ReadPool::new(&path),
                path,
                requests: Some(requests),
                writer: Some(writer),
                head: head_receiver,
                metrics,
                _lock: Some(lock),
            }),
        })
    }

    /// Opens `dir/events.sqlite` for reading only, beside a process that may be writing it
    /// (WAL lets both work): appends fail with [`StoreError::Closed`], and the head is the
    /// one found at opening, not followed. For tools that look at a running service's store;
    /// that head may include the writer's newest group before its sync has returned.
    pub fn open_read_only(dir: &Path) -> Result<Self, SqliteError> {
        let path = dir.join(schema::EVENTS.file_name);
        let open_error = |source| SqliteError::Open { path: path.clone(), source };
        if !path.exists() {
            return Err(SqliteError::Missing { path });
        }
        let connection = schema::open_reader(&path).map_err(open_error)?;
        schema::check_current(&connection, &path, &schema::EVENTS)?;
        let head: i64 =
            connection.query_row(writer::HEAD, [], |row| row.get(0)).map_err(open_error)?;
        let (_, head_receiver) = watch::channel(Position(u64::try_from(head).unwrap_or(0)));
        Ok(Self {
            inner: Arc::new(Inner {
                readers: ReadPool::new(&path),
                path,
                requests: None,
                writer: None,
                head: head_receiver,
                metrics: Arc::new(strata::GroupCommitCounters::default()),
                _lock: None,
            }),
        })
    }

    /// Whether a process (this one included) has the store in `dir` open for writing now.
    pub fn is_open_for_writing(dir: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(dir.join("events.lock")) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// Takes the exclusive lock on `dir/events.lock`. The OS releases it when the process ends,
/// however it ends, so a crash never leaves the store locked.
fn lock_for_writing(dir: &Path) -> Result<std::fs::File, SqliteError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| SqliteError::CreateDir { path: dir.to_owned(), source })?;
    let path = dir.join("events.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SqliteError::Lock { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SqliteError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(SqliteError::Lock { path, source }),
    }
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "event store writer thread panicked");
        }
    }
}

impl Inner {
    /// The newest position synced to disk: reads stop there, since a committed group is in
    /// the file before it is durable (`durability.rs`).
    fn durable_head(&self) -> i64 {
        i64::try_from(self.head.borrow().0).unwrap_or(i64::MAX)
    }
}

impl SqliteEventStore {
    /// Sends `request` to the writer thread and waits for its reply.
    async fn write<T>(
        &self,
        request: WriteRequest,
        reply: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let requests = self.inner.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.send(request).map_err(|_| StoreError::Closed)?;
        // The writer answers every request it takes; a dropped answer means it is gone.
        reply.await.map_err(|_| StoreError::Closed)?
    }
}

impl EventStore for SqliteEventStore {
    async fn append_claimed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<AppendOutcome, StoreError> {
        // Checks that need no database run here, in the caller's task, so that the writer
        // thread spends its time writing.
        strata::check_append(stream, &events)?;
        let events = events.into_iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let claim = claim.map(|claim| claim_row(&claim.key, &claim.fingerprint)).transpose()?;
        let (answer, answered) = oneshot::channel();
        let request = AppendRequest { stream: stream.clone(), expected, events, claim, answer };
        self.write(WriteRequest::Append(request), answered).await
    }

    async fn read_claim(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        let head = self.inner.durable_head();
        let record = self
            .inner
            .readers
            .run(move |connection| {
                let mut statement = connection.prepare_cached(writer::SELECT_KEY)?;
                Ok(statement.query_row([key], writer::read_record).optional()?)
            })
            .await
            .map_err(DbError::into_store_error)?;
        // A claim is written with its events: it is not there until they are durable.
        Ok(record.filter(|record| {
            record.appended.as_ref().and_then(|appended| appended.position).is_none_or(|position| {
                i64::try_from(position.0).is_ok_and(|position| position <= head)
            })
        }))
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.clone();
        self.inner
            .readers
            .run(move |connection| {
                let mut statement = connection.prepare_cached(READ_SNAPSHOT)?;
                let row = statement
                    .query_row(params![stream.aggregate_type, stream.id], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, u32>(1)?, row.get(2)?))
                    })
                    .optional()?;
                row.map(|(version, format, state)| {
                    Ok(Snapshot {
                        version: Version(from_sql_integer(version, "version")?),
                        format,
                        state,
                    })
                })
                .transpose()
            })
            .await
            .map_err(DbError::into_store_error)
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let (reply, replied) = oneshot::channel();
        let request = SnapshotRequest { stream: stream.clone(), snapshot: snapshot.clone(), reply };
        self.write(WriteRequest::Snapshot(request), replied).await
    }

    async fn event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.inner
            .readers
            .run(|connection| {
                let mut statement = connection.prepare_cached(EVENT_TYPES)?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .map_err(DbError::into_store_error)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        // No stream reaches i64::MAX events, so a larger `after` simply finds none.
        let after = i64::try_from(after.0).unwrap_or(i64::MAX);
        let head = self.inner.durable_head();
        self.inner
            .readers
            .run(move |connection| {
                let mut events = if after == 0 {
                    let mut statement = connection.prepare_cached(READ_WHOLE_STREAM)?;
                    collect_events(statement.query(params![
                        stream.aggregate_type,
                        stream.id,
                        head
                    ])?)?
                } else {
                    let mut statement = connection.prepare_cached(READ_STREAM)?;
                    collect_events(statement.query(params![
                        stream.aggregate_type,
                        stream.id,
                        after,
                        head
                    ])?)?
                };
                events.sort_unstable_by_key(|event| event.version);
                Ok(events)
            })
            .await
            .map_err(DbError::into_store_error)
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let after = i64::try_from(after.0).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let head = self.inner.durable_head();
        self.inner
            .readers
            .run(move |connection| {
                let mut statement = connection.prepare_cached(READ_ALL)?;
                let rows = statement.query(params![after, limit, head])?;
                collect_events(rows)
            })
            .await
            .map_err(DbError::into_store_error)
    }

    async fn read_positions(
        &self,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = positions.iter().map(|p| p.0.to_string()).collect();
        let list = format!("[{}]", list.join(","));
        let head = self.inner.durable_head();
        self.inner
            .readers
            .run(move |connection| {
                let mut statement = connection.prepare_cached(READ_POSITIONS)?;
                collect_events(statement.query(params![list, head])?)
            })
            .await
            .map_err(DbError::into_store_error)
    }

    fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }

    fn group_commit_metrics(&self) -> Option<GroupCommitMetrics> {
        Some(self.inner.metrics.snapshot())
    }

    fn write_failure(&self) -> Option<strata::WriteFailure> {
        self.inner.metrics.failure()
    }
}

/// Encodes an event for its row. Time is stored in nanoseconds so that the event read back
/// equals the one appended; that limits it to the years 1677 to 2262.
fn encode(event: NewEvent) -> Result<EventRow, StoreError> {
    let NewEvent { event_type, schema_version, payload, metadata } = event;
    let recorded_at = nanos(metadata.recorded_at)?;
    Ok(EventRow {
        event_id: metadata.event_id,
        event_type,
        schema_version,
        payload,
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        user_id: metadata.user,
        recorded_at,
    })
}

fn collect_events(mut rows: rusqlite::Rows<'_>) -> Result<Vec<RecordedEvent>, DbError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(decode(row)?);
    }
    Ok(events)
}

/// Reads one row selected with `columns!()` back into the event that was appended.
pub(crate) fn decode(row: &Row<'_>) -> Result<RecordedEvent, DbError> {
    let position: i64 = row.get(0)?;
    let version: i64 = row.get(3)?;
    let schema_version: i64 = row.get(5)?;
    let event_id: Vec<u8> = row.get(7)?;
    let event_id = Uuid::from_slice(&event_id).map_err(|_| {
        DbError::Corrupt(format!(
            "event at position {position} has an id of {} bytes, not 16",
            event_id.len()
        ))
    })?;
    let schema_version = u32::try_from(schema_version).map_err(|_| {
        DbError::Corrupt(format!(
            "event at position {position} has schema version {schema_version}"
        ))
    })?;
    Ok(RecordedEvent {
        stream: StreamId { aggregate_type: row.get(1)?, id: row.get(2)? },
        version: Version(from_sql_integer(version, "version")?),
        position: Position(from_sql_integer(position, "position")?),
        event_type: row.get(4)?,
        schema_version,
        payload: row.get(6)?,
        metadata: EventMetadata {
            event_id,
            correlation_id: row.get(8)?,
            causation_id: row.get(9)?,
            user: row.get(10)?,
            recorded_at: DateTime::from_timestamp_nanos(row.get(11)?),
        },
    })
}

/// A key claimed now, as the writer stores it.
fn claim_row(key: &str, fingerprint: &str) -> Result<ClaimRow, StoreError> {
    let created_at = nanos(chrono::Utc::now())?;
    Ok(ClaimRow { key: key.to_owned(), fingerprint: fingerprint.to_owned(), created_at })
}

fn nanos(time: DateTime<chrono::Utc>) -> Result<i64, StoreError> {
    time.timestamp_nanos_opt().ok_or(StoreError::UnstorableTime(time))
}

impl IdempotencyStore for SqliteEventStore {
    async fn put_answer(
        &self,
        key: &str,
        fingerprint: &str,
        answer: Vec<u8>,
    ) -> Result<(), IdempotencyError> {
        let write = async {
            let claim = claim_row(key, fingerprint)?;
            let (reply, replied) = oneshot::channel();
            let request = AnswerRequest { claim, answer, reply };
            self.write(WriteRequest::Answer(request), replied).await
        };
        write.await.map_err(|error| IdempotencyError(Box::new(error)))
    }

    async fn expire(
        &self,
        before: DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<u64, IdempotencyError> {
        let write = async {
            let before = nanos(before)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (reply, replied) = oneshot::channel();
            let request = ExpireRequest { before, limit, reply };
            self.write(WriteRequest::Expire(request), replied).await
        };
        write.await.map_err(|error| IdempotencyError(Box::new(error)))
    }
}

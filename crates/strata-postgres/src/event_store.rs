//! [`PgEventStore`]: the event log in the `strata_events` table of one schema.
//!
//! Appends are sent to the writer task (`writer.rs`), which commits them in groups under
//! the schema's append lock; reads use the shared connection pool and never wait for a
//! commit. The head that followers wait on is fed by this store's own commits and, through
//! the listener task (`listener.rs`), by every other node's. This module holds the handle,
//! the reads and the mapping between rows and events; it holds no write SQL.

use std::sync::Arc;

use chrono::DateTime;
use strata::{
    AppendOutcome, EventMetadata, EventStore, ExpectedVersion, GroupCommitMetrics,
    IdempotencyClaim, IdempotencyError, IdempotencyRecord, IdempotencyStore, NewEvent, Position,
    RecordedEvent, Snapshot, StoreError, StreamId, Version,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use crate::database::PgDatabase;
use crate::error::{DbError, PgError, from_bigint, to_bigint};
use crate::writer::{self, AppendRequest, EventRow};
use crate::{listener, writer::HEAD};

/// The columns [`decode`] reads, in its order; a macro so that queries can `concat!` it.
macro_rules! columns {
    () => {
        "position, aggregate_type, aggregate_id, version, event_type, schema_version, payload, \
         event_id, correlation_id, causation_id, user_id, recorded_at"
    };
}

const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM strata_events WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3 \
     ORDER BY version"
);
const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM strata_events WHERE position > $1 ORDER BY position LIMIT $2"
);

/// Events by position, each through the log's primary key.
const READ_POSITIONS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM strata_events WHERE position = ANY($1) ORDER BY position"
);

const READ_SNAPSHOT: &str = "SELECT version, format, state FROM strata_snapshots \
     WHERE aggregate_type = $1 AND aggregate_id = $2";
// The newer snapshot wins when two nodes write one for the same stream; at the same version
// a new format replaces an old one, or a final stream would keep an unreadable one for good.
const WRITE_SNAPSHOT: &str = "INSERT INTO strata_snapshots (aggregate_type, aggregate_id, \
     version, format, state) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
     SET version = excluded.version, format = excluded.format, state = excluded.state \
     WHERE strata_snapshots.version < excluded.version \
     OR (strata_snapshots.version = excluded.version AND strata_snapshots.format <> excluded.format)";
const EVENT_TYPES: &str = "SELECT DISTINCT event_type, schema_version FROM strata_events";

/// An [`EventStore`] on PostgreSQL, safe to run on several nodes against one schema.
///
/// Clones share one store: one writer connection, one listener connection and the
/// database's read pool. When the last clone is dropped, the writer finishes the appends
/// already sent and stops, and the listener stops.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    database: PgDatabase,
    /// Closing this channel (dropping the store) is what stops the writer.
    requests: mpsc::UnboundedSender<AppendRequest>,
    /// The head: written by the writer after each commit and by the listener.
    published: Arc<watch::Sender<Position>>,
    listener: JoinHandle<()>,
    metrics: Arc<strata::GroupCommitCounters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer stops by itself once `requests` is dropped, after answering what it
        // holds; the listener only ever waits, so it is stopped outright.
        self.listener.abort();
    }
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.database.schema())
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// Connects to `url`, migrates `schema` (see [`PgDatabase::connect`]) and opens the store.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, PgError> {
        Self::open(&PgDatabase::connect(url, schema).await?).await
    }

    /// Opens the store on a migrated database: reads the head and starts the writer and
    /// listener tasks. Must be called within a tokio runtime.
    pub async fn open(database: &PgDatabase) -> Result<Self, PgError> {
        let client = database.pool().get().await.map_err(PgError::PoolGet)?;
        let head: i64 = client.query_one(HEAD, &[]).await.map_err(PgError::Database)?.get(0);
        drop(client);
        let published = Arc::new(watch::channel(Position(u64::try_from(head).unwrap_or(0))).0);
        let (requests, received) = mpsc::unbounded_channel();
        // The writer's handle is not kept: it stops when `requests` closes, and nothing
        // needs to wait for it (the database, not this process, holds what it committed).
        let metrics = Arc::new(strata::GroupCommitCounters::default());
        drop(writer::spawn(database, Arc::clone(&published), Arc::clone(&metrics), received));
        let listener = listener::spawn(database, Arc::clone(&published));
        Ok(Self {
            inner: Arc::new(Inner {
                database: database.clone(),
                requests,
                published,
                listener,
                metrics,
            }),
        })
    }

    /// The database this store is in.
    pub fn database(&self) -> &PgDatabase {
        &self.inner.database
    }
}

impl EventStore for PgEventStore {
    async fn append_claimed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<AppendOutcome, StoreError> {
        // Checks that need no database run here, in the caller's task, so that the writer
        // spends its time writing.
        strata::check_append(stream, &events)?;
        let events = events.into_iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let claim = claim.map(|claim| (claim.key.clone(), claim.fingerprint.clone()));
        let (answer, answered) = oneshot::channel();
        let request = AppendRequest { stream: stream.clone(), expected, events, claim, answer };
        self.inner.requests.send(request).map_err(|_| StoreError::Closed)?;
        // The writer answers every request it takes; a dropped answer means it is gone.
        answered.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_claim(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(writer::SELECT_KEY).await?;
            let row = client.query_opt(&statement, &[&key]).await?;
            row.as_ref().map(writer::read_record).transpose()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(READ_SNAPSHOT).await?;
            let row = client.query_opt(&statement, &[&stream.aggregate_type, &stream.id]).await?;
            row.map(|row| {
                let format: i64 = row.try_get(1)?;
                Ok(Snapshot {
                    version: Version(from_bigint(row.try_get(0)?, "version")?),
                    format: u32::try_from(format).unwrap_or(u32::MAX),
                    state: row.try_get(2)?,
                })
            })
            .transpose()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let write = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(WRITE_SNAPSHOT).await?;
            let version = to_bigint(snapshot.version.0);
            let format = i64::from(snapshot.format);
            let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&stream.aggregate_type, &stream.id, &version, &format, &snapshot.state];
            client.execute(&statement, &parameters).await?;
            Ok::<_, DbError>(())
        };
        bounded(write).await.map_err(DbError::into_store_error)
    }

    async fn event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(EVENT_TYPES).await?;
            let rows = client.query(&statement, &[]).await?;
            rows.iter()
                .map(|row| {
                    let version: i64 = row.try_get(1)?;
                    let version = u32::try_from(version).map_err(|_| {
                        DbError::Corrupt(format!("stored schema version {version} is out of range"))
                    })?;
                    Ok((row.try_get(0)?, version))
                })
                .collect::<Result<Vec<_>, DbError>>()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: Version,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(READ_STREAM).await?;
            let rows = client
                .query(&statement, &[&stream.aggregate_type, &stream.id, &to_bigint(after.0)])
                .await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, DbError>>()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(READ_ALL).await?;
            let rows = client.query(&statement, &[&to_bigint(after.0), &limit]).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, DbError>>()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    async fn read_positions(
        &self,
        positions: &[Position],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<i64> = positions.iter().map(|p| to_bigint(p.0)).collect();
        let read = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(READ_POSITIONS).await?;
            let rows = client.query(&statement, &[&positions]).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, DbError>>()
        };
        bounded(read).await.map_err(DbError::into_store_error)
    }

    fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.published.subscribe()
    }

    fn group_commit_metrics(&self) -> Option<GroupCommitMetrics> {
        Some(self.inner.metrics.snapshot())
    }

    fn write_failure(&self) -> Option<strata::WriteFailure> {
        self.inner.metrics.failure()
    }
}

/// How long one read or snapshot write may take: a server that hangs must not hang the
/// commands that load aggregates (their appends have the writer's own bound).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn bounded<T>(work: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(READ_TIMEOUT, work).await.unwrap_or(Err(DbError::TimedOut(READ_TIMEOUT)))
}

/// Encodes an event for its row. Time is stored in nanoseconds so that the event read back
/// equals the one appended; that limits it to the years 1677 to 2262.
fn encode(event: NewEvent) -> Result<EventRow, StoreError> {
    let NewEvent { event_type, schema_version, payload, metadata } = event;
    let recorded_at = metadata
        .recorded_at
        .timestamp_nanos_opt()
        .ok_or(StoreError::UnstorableTime(metadata.recorded_at))?;
    Ok(EventRow {
        event_id: metadata.event_id,
        event_type,
        schema_version: i64::from(schema_version),
        payload,
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        user_id: metadata.user,
        recorded_at,
    })
}

/// Reads one row selected with `columns!()` back into the event that was appended.
pub(crate) fn decode(row: &Row) -> Result<RecordedEvent, DbError> {
    let position = from_bigint(row.try_get(0)?, "position")?;
    let schema_version: i64 = row.try_get(5)?;
    let schema_version = u32::try_from(schema_version).map_err(|_| {
        DbError::Corrupt(format!(
            "event at position {position} has schema version {schema_version}"
        ))
    })?;
    Ok(RecordedEvent {
        stream: StreamId { aggregate_type: row.try_get(1)?, id: row.try_get(2)? },
        version: Version(from_bigint(row.try_get(3)?, "version")?),
        position: Position(position),
        event_type: row.try_get(4)?,
        schema_version,
        payload: row.try_get(6)?,
        metadata: EventMetadata {
            event_id: row.try_get(7)?,
            correlation_id: row.try_get(8)?,
            causation_id: row.try_get(9)?,
            user: row.try_get(10)?,
            recorded_at: DateTime::from_timestamp_nanos(row.try_get(11)?),
        },
    })
}

// The first record for a key wins; a later answer for it is not an error, it just loses.
const PUT_ANSWER: &str = "INSERT INTO strata_idempotency (key, fingerprint, answer) \
     VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING";
const EXPIRE_KEYS: &str = "DELETE FROM strata_idempotency WHERE key IN \
     (SELECT key FROM strata_idempotency WHERE created_at < $1 LIMIT $2)";

/// The records live in `strata_idempotency`, shared by every node, so a retry that lands on
/// another node finds them too.
impl IdempotencyStore for PgEventStore {
    async fn put_answer(
        &self,
        key: &str,
        fingerprint: &str,
        answer: Vec<u8>,
    ) -> Result<(), IdempotencyError> {
        let write = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(PUT_ANSWER).await?;
            client.execute(&statement, &[&key, &fingerprint, &answer]).await?;
            Ok::<_, DbError>(())
        };
        write.await.map_err(DbError::into_idempotency_error)
    }

    async fn expire(
        &self,
        before: DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<u64, IdempotencyError> {
        let delete = async {
            let client = self.inner.database.pool().get().await?;
            let statement = client.prepare_cached(EXPIRE_KEYS).await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            Ok::<_, DbError>(client.execute(&statement, &[&before, &limit]).await?)
        };
        delete.await.map_err(DbError::into_idempotency_error)
    }
}

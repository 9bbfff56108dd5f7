//! [`PgViewManager`]: view instances, their tables, parked events and projection
//! checkpoints in `strata_views`, `strata_parked_events`, `strata_skipped_events`,
//! `strata_checkpoints` and the projections' own tables.
//!
//! A commit takes the checkpoint row's lock first (`SELECT … FOR UPDATE`, after making sure
//! the row exists) and writes the batch's views, parked events and the new checkpoint
//! behind it, all sent at once; it then checks the row it locked with the core's
//! [`Checkpoint::fence`] and commits, or rolls back if the fence fails. Under READ COMMITTED
//! a second runner, retry or rebuild racing from the same checkpoint waits for the first
//! one's row lock, then reads the committed row, fails the fence, and leaves nothing. Table
//! rows are written after the fence holds, a statement or two per table. A
//! rebuild's storage sits beside the live one under the key `<name>#rebuild` and tables
//! `<table>__rebuild`; beginning, failing and finishing one also take a transaction-level
//! advisory lock per projection, so two nodes never begin two rebuilds at once.
//!
//! Creating tables (on every node, at start) takes a transaction-level advisory lock per
//! table, because concurrent `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::table::{TableQuery, TableSpec, Value};
use strata::{
    Checkpoint, Commit, EncodedCommit, EncodedView, ParkedInstance, Parking, Position,
    ProjectionRecord, RebuildRecord, RecordedEvent, SkippedEvent, Slot, StoredView, ViewError,
    ViewManager, check_projection_name, decode_view, encode_commit,
};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use crate::database::{PgDatabase, lock_key};
use crate::error::{DbError, PgError, from_bigint, to_bigint};
use crate::tables;

/// One primary-key probe per id, whatever the planner believes of the table: with
/// `view_id = ANY($2)`, a table without statistics yet (new, or filling during a rebuild)
/// was planned as a scan of every view of the projection, and after `ANALYZE` a long list
/// as a scan of the whole table (docs/benchmarks.md, fourth round). `LIMIT 1` keeps each
/// probe a subquery of its own (the key is unique, so it drops nothing).
const SELECT_VIEWS: &str = "SELECT v.view_id, v.data, v.position, v.parked_position, \
     v.parked_error, v.parked_attempts, v.parked_at FROM unnest($2::text[]) AS wanted (view_id), \
     LATERAL (SELECT * FROM strata_views s WHERE s.projection = $1 AND s.view_id = wanted.view_id \
     LIMIT 1) AS v";
const SELECT_VIEW: &str = "SELECT view_id, data, position, parked_position, parked_error, parked_attempts, \
     parked_at FROM strata_views WHERE projection = $1 AND view_id = $2";
const UPSERT_VIEWS: &str = "INSERT INTO strata_views \
     (projection, view_id, data, position, parked_position, parked_error, parked_attempts, parked_at) \
     SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bigint[], $5::bigint[], $6::text[], \
     $7::integer[], $8::timestamptz[]) \
     ON CONFLICT (projection, view_id) DO UPDATE SET data = excluded.data, position = excluded.position, \
     parked_position = excluded.parked_position, parked_error = excluded.parked_error, \
     parked_attempts = excluded.parked_attempts, parked_at = excluded.parked_at";
const DELETE_VIEWS: &str = "DELETE FROM strata_views WHERE projection = $1 AND view_id = ANY($2)";
const ENSURE_CHECKPOINT: &str = "INSERT INTO strata_checkpoints (projection, position, revision) \
     VALUES ($1, 0, 0) ON CONFLICT (projection) DO NOTHING";
const LOCK_CHECKPOINT: &str =
    "SELECT position, revision FROM strata_checkpoints WHERE projection = $1 FOR UPDATE";
const SELECT_CHECKPOINT: &str = "SELECT position, revision, started_at, error, version FROM strata_checkpoints WHERE projection = $1";
const MOVE_CHECKPOINT: &str =
    "UPDATE strata_checkpoints SET position = $2, revision = $3 WHERE projection = $1";
const RELEASE_PARKED: &str =
    "DELETE FROM strata_parked_events WHERE projection = $1 AND view_id = ANY($2)";
const INSERT_PARKED: &str = "INSERT INTO strata_parked_events (projection, view_id, position, \
     aggregate_type, aggregate_id, version, event_type, schema_version, payload, event_id, \
     correlation_id, causation_id, user_id, recorded_at) \
     SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], \
     $7::text[], $8::bigint[], $9::bytea[], $10::uuid[], $11::text[], $12::text[], $13::text[], \
     $14::bigint[]) ON CONFLICT DO NOTHING";
const INSERT_SKIPPED: &str = "INSERT INTO strata_skipped_events \
     (projection, view_id, position, event_type, reason, skipped_at) \
     SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[]) \
     ON CONFLICT DO NOTHING";
const COUNT_PARKED: &str =
    "SELECT count(*) FROM strata_views WHERE projection = $1 AND parked_position IS NOT NULL";
const SELECT_PARKED: &str = "SELECT v.view_id, v.parked_position, v.parked_error, v.parked_attempts, \
     v.parked_at, (SELECT count(*) FROM strata_parked_events p \
     WHERE p.projection = v.projection AND p.view_id = v.view_id) \
     FROM strata_views v WHERE v.projection = $1 AND v.parked_position IS NOT NULL \
     ORDER BY v.parked_position, v.view_id";
const SELECT_PARKED_EVENTS: &str = "SELECT position, aggregate_type, aggregate_id, version, event_type, \
     schema_version, payload, event_id, correlation_id, causation_id, user_id, recorded_at \
     FROM strata_parked_events WHERE projection = $1 AND view_id = $2 ORDER BY position";
const SELECT_SKIPPED: &str = "SELECT view_id, position, event_type, reason, skipped_at \
     FROM strata_skipped_events WHERE projection = $1 ORDER BY skipped_at, position";

/// A [`ViewManager`] on PostgreSQL. Clones share the database's connection pool.
#[derive(Clone, Debug)]
pub struct PgViewManager {
    database: PgDatabase,
}

impl PgViewManager {
    /// A view manager on a migrated database.
    pub fn new(database: &PgDatabase) -> Self {
        Self { database: database.clone() }
    }

    /// Connects to `url`, migrates `schema` (see [`PgDatabase::connect`]) and opens the
    /// manager.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, PgError> {
        Ok(Self::new(&PgDatabase::connect(url, schema).await?))
    }

    fn lock(&self, purpose: &str, name: &str) -> i64 {
        lock_key(purpose, self.database.schema(), name)
    }
}

fn decode<V: DeserializeOwned>(
    projection: &str,
    row: &tokio_postgres::Row,
) -> Result<(String, StoredView<V>), ViewError> {
    let read = || -> Result<_, DbError> {
        let id: String = row.try_get(0)?;
        let data: Vec<u8> = row.try_get(1)?;
        let position = Position(from_bigint(row.try_get(2)?, "view position")?);
        let parked = match row.try_get::<_, Option<i64>>(3)? {
            Some(parked_position) => Some(Parking {
                position: Position(from_bigint(parked_position, "parked position")?),
                error: row.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
                attempts: u32::try_from(row.try_get::<_, Option<i32>>(5)?.unwrap_or(0))
                    .unwrap_or(0),
                parked_at: row.try_get::<_, Option<DateTime<Utc>>>(6)?.unwrap_or_default(),
            }),
            None => None,
        };
        Ok((id, data, position, parked))
    };
    let (id, data, position, parked) = read().map_err(DbError::into_view_error)?;
    let view = decode_view(projection, &id, &data)?;
    Ok((id, StoredView { view, position, parked }))
}

/// A checkpoint row: the slot's checkpoint, and for a rebuild when it began and why it failed;
/// the definition version that wrote it.
struct CheckpointRow {
    checkpoint: Checkpoint,
    started_at: Option<DateTime<Utc>>,
    error: Option<String>,
    version: u32,
}

/// The checkpoint in a row whose first two columns are `position, revision`.
fn checkpoint_of(row: &tokio_postgres::Row) -> Result<Checkpoint, DbError> {
    Ok(Checkpoint {
        position: Position(from_bigint(row.try_get(0)?, "checkpoint")?),
        revision: from_bigint(row.try_get(1)?, "checkpoint revision")?,
    })
}

async fn checkpoint_row(
    transaction: &Transaction<'_>,
    key: &str,
) -> Result<Option<CheckpointRow>, DbError> {
    let statement = transaction.prepare_cached(SELECT_CHECKPOINT).await?;
    let Some(row) = transaction.query_opt(&statement, &[&key]).await? else { return Ok(None) };
    let checkpoint = checkpoint_of(&row)?;
    let version: i32 = row.try_get(4)?;
    Ok(Some(CheckpointRow {
        checkpoint,
        started_at: row.try_get(2)?,
        error: row.try_get(3)?,
        version: u32::try_from(version).unwrap_or(0),
    }))
}

/// A definition version as the `integer` column holds it; versions past `i32::MAX` do not
/// occur (they count edits to one projection by hand).
fn version_int(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

/// Takes the lock of `key`'s checkpoint row (creating it at 0 if missing) and reads it.
async fn lock_checkpoint(transaction: &Transaction<'_>, key: &str) -> Result<Checkpoint, DbError> {
    let ensure = transaction.prepare_cached(ENSURE_CHECKPOINT).await?;
    transaction.execute(&ensure, &[&key]).await?;
    let lock = transaction.prepare_cached(LOCK_CHECKPOINT).await?;
    checkpoint_of(&transaction.query_one(&lock, &[&key]).await?)
}

async fn move_checkpoint(
    transaction: &Transaction<'_>,
    key: &str,
    to: Checkpoint,
) -> Result<(), DbError> {
    let statement = transaction.prepare_cached(MOVE_CHECKPOINT).await?;
    let (position, revision) = (to_bigint(to.position.0), to_bigint(to.revision));
    transaction.execute(&statement, &[&key, &position, &revision]).await?;
    Ok(())
}

/// The running rebuild of `projection` (not a failed one).
async fn running_rebuild(
    transaction: &Transaction<'_>,
    projection: &str,
) -> Result<Option<Checkpoint>, DbError> {
    Ok(checkpoint_row(transaction, &Slot::Rebuild.key(projection))
        .await?
        .filter(|row| row.started_at.is_some() && row.error.is_none())
        .map(|row| row.checkpoint))
}

/// Writes a batch under its checkpoint's lock and fences it: `Ok(Err(_))` when the
/// checkpoint had moved, and then the caller rolls back what was written.
///
/// Every statement is prepared first (from the connection's cache after its first batch),
/// so that each is sent the first time it is polled: the lock goes first and the writes
/// after it, in one round trip instead of one each. The server runs them in the order sent,
/// so a racing writer still waits at the lock before writing anything, and two writers take
/// their locks in the same order.
async fn write_commit(
    transaction: &Transaction<'_>,
    projection: &str,
    slot: Slot,
    commit: &EncodedCommit,
) -> Result<Result<(), ViewError>, DbError> {
    let key = slot.key(projection);
    let views = ViewColumns::of(&commit.views);
    let parked = ParkedColumns::of(&commit.parked_events)?;
    let skipped = SkippedColumns::of(&commit.skipped);
    let next = commit.next();
    let (position, revision) = (to_bigint(next.position.0), to_bigint(next.revision));
    let key_only: [&(dyn ToSql + Sync); 1] = [&key];
    let upsert_params = views.upsert_params(&key);
    let delete_params: [&(dyn ToSql + Sync); 2] = [&key, &views.deleted];
    let release_params: [&(dyn ToSql + Sync); 2] = [&key, &commit.released];
    let park_params = parked.params(&key);
    let skip_params = skipped.params(&projection);
    let move_params: [&(dyn ToSql + Sync); 3] = [&key, &position, &revision];

    let ensure = transaction.prepare_cached(ENSURE_CHECKPOINT).await?;
    let lock = transaction.prepare_cached(LOCK_CHECKPOINT).await?;
    let upsert = prepare_if(transaction, !views.ids.is_empty(), UPSERT_VIEWS).await?;
    let delete = prepare_if(transaction, !views.deleted.is_empty(), DELETE_VIEWS).await?;
    let release = prepare_if(transaction, !commit.released.is_empty(), RELEASE_PARKED).await?;
    let park = prepare_if(transaction, !parked.ids.is_empty(), INSERT_PARKED).await?;
    let skip = prepare_if(transaction, !skipped.ids.is_empty(), INSERT_SKIPPED).await?;
    let move_to = transaction.prepare_cached(MOVE_CHECKPOINT).await?;
    let (ensured, locked, upserted, deleted, released, parked, skipped, moved) = tokio::join!(
        biased;
        transaction.execute(&ensure, &key_only),
        transaction.query_one(&lock, &key_only),
        execute_if(transaction, upsert.as_ref(), &upsert_params),
        execute_if(transaction, delete.as_ref(), &delete_params),
        execute_if(transaction, release.as_ref(), &release_params),
        execute_if(transaction, park.as_ref(), &park_params),
        execute_if(transaction, skip.as_ref(), &skip_params),
        transaction.execute(&move_to, &move_params),
    );
    // In the order sent: after a failed statement the later ones fail only because it did.
    ensured?;
    let row = locked?;
    for written in [upserted, deleted, released, parked, skipped, moved] {
        written?;
    }
    let actual = checkpoint_of(&row)?;
    if let Err(fenced) = Checkpoint::fence(&key, commit.from, actual) {
        return Ok(Err(fenced));
    }
    // A statement or two per table, in turn: only reports have rows.
    tables::apply(transaction, &commit.rows, |spec| slot.table(spec.name)).await?;
    Ok(Ok(()))
}

async fn prepare_if(
    transaction: &Transaction<'_>,
    needed: bool,
    sql: &str,
) -> Result<Option<Statement>, DbError> {
    Ok(if needed { Some(transaction.prepare_cached(sql).await?) } else { None })
}

/// Runs `statement` if there is one, sending it when first polled.
async fn execute_if(
    transaction: &Transaction<'_>,
    statement: Option<&Statement>,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    match statement {
        Some(statement) => transaction.execute(statement, params).await,
        None => Ok(0),
    }
}

/// A batch's views as `UPSERT_VIEWS`'s arrays, and the ids to delete.
#[derive(Default)]
struct ViewColumns<'a> {
    deleted: Vec<&'a str>,
    ids: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    positions: Vec<i64>,
    parked_positions: Vec<Option<i64>>,
    errors: Vec<Option<&'a str>>,
    attempts: Vec<Option<i32>>,
    parked_at: Vec<Option<DateTime<Utc>>>,
}

impl<'a> ViewColumns<'a> {
    fn of(views: &'a [EncodedView]) -> Self {
        let mut columns = Self::default();
        for view in views {
            let Some(bytes) = &view.data else {
                columns.deleted.push(view.id.as_str());
                continue;
            };
            columns.ids.push(view.id.as_str());
            columns.data.push(bytes.as_slice());
            columns.positions.push(to_bigint(view.position.0));
            let parked = view.parked.as_ref();
            columns.parked_positions.push(parked.map(|p| to_bigint(p.position.0)));
            columns.errors.push(parked.map(|p| p.error.as_str()));
            columns.attempts.push(parked.map(|p| i32::try_from(p.attempts).unwrap_or(i32::MAX)));
            columns.parked_at.push(parked.map(|p| p.parked_at));
        }
        columns
    }

    fn upsert_params<'p>(&'p self, key: &'p String) -> [&'p (dyn ToSql + Sync); 8] {
        [
            key,
            &self.ids,
            &self.data,
            &self.positions,
            &self.parked_positions,
            &self.errors,
            &self.attempts,
            &self.parked_at,
        ]
    }
}

/// Events parked behind their instances, as `INSERT_PARKED`'s arrays.
struct ParkedColumns<'a> {
    ids: Vec<&'a str>,
    positions: Vec<i64>,
    types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    versions: Vec<i64>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    event_ids: Vec<uuid::Uuid>,
    correlations: Vec<&'a str>,
    causations: Vec<Option<&'a str>>,
    users: Vec<Option<&'a str>>,
    recorded_at: Vec<i64>,
}

impl<'a> ParkedColumns<'a> {
    fn of(events: &'a [(String, RecordedEvent)]) -> Result<Self, DbError> {
        let mut recorded_at = Vec::with_capacity(events.len());
        for (_, event) in events {
            let nanos = event.metadata.recorded_at.timestamp_nanos_opt().ok_or_else(|| {
                DbError::Corrupt(format!(
                    "event {} has an unstorable time",
                    event.metadata.event_id
                ))
            })?;
            recorded_at.push(nanos);
        }
        Ok(Self {
            ids: events.iter().map(|(id, _)| id.as_str()).collect(),
            positions: events.iter().map(|(_, e)| to_bigint(e.position.0)).collect(),
            types: events.iter().map(|(_, e)| e.stream.aggregate_type.as_str()).collect(),
            aggregate_ids: events.iter().map(|(_, e)| e.stream.id.as_str()).collect(),
            versions: events.iter().map(|(_, e)| to_bigint(e.version.0)).collect(),
            event_types: events.iter().map(|(_, e)| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(|(_, e)| i64::from(e.schema_version)).collect(),
            payloads: events.iter().map(|(_, e)| e.payload.as_slice()).collect(),
            event_ids: events.iter().map(|(_, e)| e.metadata.event_id).collect(),
            correlations: events.iter().map(|(_, e)| e.metadata.correlation_id.as_str()).collect(),
            causations: events.iter().map(|(_, e)| e.metadata.causation_id.as_deref()).collect(),
            users: events.iter().map(|(_, e)| e.metadata.user.as_deref()).collect(),
            recorded_at,
        })
    }

    fn params<'p>(&'p self, key: &'p String) -> [&'p (dyn ToSql + Sync); 14] {
        [
            key,
            &self.ids,
            &self.positions,
            &self.types,
            &self.aggregate_ids,
            &self.versions,
            &self.event_types,
            &self.schema_versions,
            &self.payloads,
            &self.event_ids,
            &self.correlations,
            &self.causations,
            &self.users,
            &self.recorded_at,
        ]
    }
}

/// Events no instance would take, as `INSERT_SKIPPED`'s arrays.
struct SkippedColumns<'a> {
    ids: Vec<&'a str>,
    positions: Vec<i64>,
    types: Vec<&'a str>,
    reasons: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> SkippedColumns<'a> {
    fn of(skipped: &'a [SkippedEvent]) -> Self {
        Self {
            ids: skipped.iter().map(|s| s.view_id.as_str()).collect(),
            positions: skipped.iter().map(|s| to_bigint(s.position.0)).collect(),
            types: skipped.iter().map(|s| s.event_type.as_str()).collect(),
            reasons: skipped.iter().map(|s| s.reason.as_str()).collect(),
            times: skipped.iter().map(|s| s.skipped_at).collect(),
        }
    }

    fn params<'p>(&'p self, projection: &'p &'p str) -> [&'p (dyn ToSql + Sync); 6] {
        [projection, &self.ids, &self.positions, &self.types, &self.reasons, &self.times]
    }
}

/// How long a read of views may take before it counts as failed. Longer than any query's
/// own bound (`--request-timeout`), so it only ends calls nobody waits for any more.
const READ_BOUND: Duration = Duration::from_secs(15);
/// How long a projection's commit may take. A frozen server makes the commit fail and the
/// projection show `failed`, rather than hang; a commit that in fact happened is found by the
/// checkpoint's fence when the batch is tried again.
const WRITE_BOUND: Duration = Duration::from_secs(30);

/// `work`, or [`DbError::TimedOut`] once `limit` has passed.
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(limit, work).await.unwrap_or(Err(DbError::TimedOut(limit)))
}

impl PgViewManager {
    /// Runs `work` in a transaction that commits only when it returns `Ok(Ok(_))`.
    async fn write<T>(
        &self,
        work: impl for<'t> AsyncFnOnce(&'t Transaction<'_>) -> Result<Result<T, ViewError>, DbError>,
    ) -> Result<T, ViewError> {
        let run = async {
            let mut client = self.database.pool().get().await?;
            let transaction = client.transaction().await?;
            let done = work(&transaction).await?;
            if done.is_ok() {
                transaction.commit().await?;
            }
            // Otherwise dropping the transaction rolls it back: nothing was written.
            Ok::<_, DbError>(done)
        };
        within(WRITE_BOUND, run).await.map_err(DbError::into_view_error)?
    }

    async fn read<T>(
        &self,
        work: impl for<'t> AsyncFnOnce(&'t Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, ViewError> {
        let run = async {
            let mut client = self.database.pool().get().await?;
            // REPEATABLE READ: every statement of the read sees one snapshot.
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let found = work(&transaction).await?;
            transaction.commit().await?;
            Ok::<_, DbError>(found)
        };
        within(READ_BOUND, run).await.map_err(DbError::into_view_error)
    }
}

impl ViewManager for PgViewManager {
    async fn prepare(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
    ) -> Result<u32, ViewError> {
        check_projection_name(projection)?;
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
        }
        // Views of another version keep their tables as they are until the rebuild
        // replaces them: today's spec may not even fit them (an index on a new column).
        // Tables they lack are made, so that queries find them empty meanwhile.
        let stored = self.record(projection).await?.version;
        let other_version = stored != 0 && stored != version;
        for spec in tables {
            let lock = self.lock("table", spec.name);
            let sql = tables::create(spec, spec.name);
            self.write(async move |transaction| {
                transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
                let exists = transaction
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_tables \
                         WHERE schemaname = current_schema() AND tablename = $1)",
                        &[&spec.name],
                    )
                    .await?
                    .try_get::<_, bool>(0)?;
                if !exists || !other_version {
                    transaction.batch_execute(&sql).await?;
                }
                Ok(Ok(()))
            })
            .await?;
        }
        if other_version {
            return Ok(stored);
        }
        let version = version_int(version);
        self.write(async move |transaction| {
            transaction
                .execute(
                    "INSERT INTO strata_checkpoints (projection, position, revision, version) \
                     VALUES ($1, 0, 0, $2) ON CONFLICT (projection) DO NOTHING",
                    &[&projection, &version],
                )
                .await?;
            let row = transaction
                .query_one(
                    "SELECT version FROM strata_checkpoints WHERE projection = $1",
                    &[&projection],
                )
                .await?;
            let stored: i32 = row.try_get(0)?;
            Ok(Ok(u32::try_from(stored).unwrap_or(0)))
        })
        .await
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        // One statement, so every view comes from the same snapshot.
        let key = slot.key(projection);
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_VIEWS).await?;
            Ok::<_, DbError>(client.query(&statement, &[&key, &ids]).await?)
        };
        let rows = within(READ_BOUND, read).await.map_err(DbError::into_view_error)?;
        rows.iter().map(|row| decode(projection, row)).collect()
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_VIEW).await?;
            Ok::<_, DbError>(client.query_opt(&statement, &[&projection, &id]).await?)
        };
        let row = within(READ_BOUND, read).await.map_err(DbError::into_view_error)?;
        row.map(|row| decode(projection, &row).map(|(_, stored)| stored)).transpose()
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        let key = slot.key(projection);
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_CHECKPOINT).await?;
            let Some(row) = client.query_opt(&statement, &[&key]).await? else {
                return Ok(Checkpoint::START);
            };
            checkpoint_of(&row)
        };
        within(READ_BOUND, read).await.map_err(DbError::into_view_error)
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        // Encode everything first: a view that does not serialize fails the commit before
        // anything is written, and no JSON work holds a connection.
        let encoded = encode_commit(projection, commit)?;
        self.write(async |transaction| write_commit(transaction, projection, slot, &encoded).await)
            .await
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        let key = slot.key(projection);
        self.read(async |transaction| {
            let statement = transaction.prepare_cached(SELECT_PARKED).await?;
            let mut parked = Vec::new();
            for row in transaction.query(&statement, &[&key]).await? {
                parked.push(ParkedInstance {
                    view_id: row.try_get(0)?,
                    position: Position(from_bigint(row.try_get(1)?, "parked position")?),
                    error: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                    attempts: u32::try_from(row.try_get::<_, Option<i32>>(3)?.unwrap_or(0))
                        .unwrap_or(0),
                    parked_at: row.try_get::<_, Option<DateTime<Utc>>>(4)?.unwrap_or_default(),
                    events: from_bigint(row.try_get(5)?, "parked events")?,
                });
            }
            Ok(parked)
        })
        .await
    }

    async fn parked_events(
        &self,
        projection: &str,
        slot: Slot,
        id: &str,
    ) -> Result<Vec<RecordedEvent>, ViewError> {
        let key = slot.key(projection);
        self.read(async |transaction| {
            let statement = transaction.prepare_cached(SELECT_PARKED_EVENTS).await?;
            let rows = transaction.query(&statement, &[&key, &id]).await?;
            rows.iter().map(crate::event_store::decode).collect()
        })
        .await
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        self.read(async |transaction| {
            let statement = transaction.prepare_cached(SELECT_SKIPPED).await?;
            let mut skipped = Vec::new();
            for row in transaction.query(&statement, &[&projection]).await? {
                skipped.push(SkippedEvent {
                    view_id: row.try_get(0)?,
                    position: Position(from_bigint(row.try_get(1)?, "skipped position")?),
                    event_type: row.try_get(2)?,
                    reason: row.try_get(3)?,
                    skipped_at: row.try_get(4)?,
                });
            }
            Ok(skipped)
        })
        .await
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        self.read(async |transaction| {
            let live = checkpoint_row(transaction, projection).await?;
            let statement = transaction.prepare_cached(COUNT_PARKED).await?;
            let parked: i64 =
                transaction.query_one(&statement, &[&projection]).await?.try_get(0)?;
            let rebuild = checkpoint_row(transaction, &Slot::Rebuild.key(projection))
                .await?
                .and_then(|row| {
                    Some(RebuildRecord {
                        checkpoint: row.checkpoint,
                        started_at: row.started_at?,
                        error: row.error,
                        version: row.version,
                    })
                });
            Ok(ProjectionRecord {
                checkpoint: live.as_ref().map(|row| row.checkpoint).unwrap_or_default(),
                version: live.map_or(0, |row| row.version),
                parked: from_bigint(parked, "parked count")?,
                rebuild,
            })
        })
        .await
    }

    async fn select(
        &self,
        table: &'static TableSpec,
        query: &TableQuery,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        query.check(table).map_err(ViewError::InvalidTable)?;
        let (sql, params) = tables::select(table, query);
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(&sql).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = client.query(&statement, &params).await?;
            rows.iter().map(|row| tables::row_values(table, row)).collect::<Result<Vec<_>, _>>()
        };
        within(READ_BOUND, read).await.map_err(DbError::into_view_error)
    }

    async fn begin_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        version: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Checkpoint, ViewError> {
        check_projection_name(projection)?;
        for spec in tables {
            spec.check().map_err(ViewError::InvalidTable)?;
        }
        let lock = self.lock("rebuild", projection);
        self.write(async |transaction| {
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
            if running_rebuild(transaction, projection).await?.is_some() {
                return Ok(Err(ViewError::RebuildInProgress(projection.to_owned())));
            }
            let key = Slot::Rebuild.key(projection);
            // The checkpoint's lock before the slot's rows, in the order a commit takes them:
            // a stale runner's commit to this slot waits here instead of deadlocking.
            let previous = lock_checkpoint(transaction, &key).await?;
            transaction.execute("DELETE FROM strata_views WHERE projection = $1", &[&key]).await?;
            transaction.execute("DELETE FROM strata_parked_events WHERE projection = $1", &[&key]).await?;
            for spec in tables {
                let name = Slot::Rebuild.table(spec.name);
                transaction.batch_execute(&format!("DROP TABLE IF EXISTS {name};{}", tables::create(spec, &name))).await?;
            }
            let begun = Checkpoint { position: Position::START, revision: previous.revision + 1 };
            transaction
                .execute(
                    "UPDATE strata_checkpoints SET position = 0, revision = $2, started_at = $3, error = NULL, \
                     version = $4 WHERE projection = $1",
                    &[&key, &to_bigint(begun.revision), &started_at, &version_int(version)],
                )
                .await?;
            Ok(Ok(begun))
        })
        .await
    }

    async fn fail_rebuild(
        &self,
        projection: &str,
        at: Checkpoint,
        error: &str,
    ) -> Result<(), ViewError> {
        let lock = self.lock("rebuild", projection);
        self.write(async |transaction| {
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
            let key = Slot::Rebuild.key(projection);
            if running_rebuild(transaction, projection).await?.is_none() {
                return Ok(Err(ViewError::NoRebuild(projection.to_owned())));
            }
            let actual = lock_checkpoint(transaction, &key).await?;
            if let Err(fenced) = Checkpoint::fence(&key, at, actual) {
                return Ok(Err(fenced));
            }
            transaction
                .execute(
                    "UPDATE strata_checkpoints SET error = $2 WHERE projection = $1",
                    &[&key, &error],
                )
                .await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn finish_rebuild(
        &self,
        projection: &str,
        tables: &[&'static TableSpec],
        rebuilt: Checkpoint,
        live: Checkpoint,
    ) -> Result<Checkpoint, ViewError> {
        let lock = self.lock("rebuild", projection);
        self.write(async |transaction| {
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
            let key = Slot::Rebuild.key(projection);
            if running_rebuild(transaction, projection).await?.is_none() {
                return Ok(Err(ViewError::NoRebuild(projection.to_owned())));
            }
            let rebuild_now = lock_checkpoint(transaction, &key).await?;
            let live_now = lock_checkpoint(transaction, projection).await?;
            if let Err(fenced) = Checkpoint::fence(&key, rebuilt, rebuild_now)
                .and_then(|()| Checkpoint::fence(projection, live, live_now))
            {
                return Ok(Err(fenced));
            }
            for table in ["strata_views", "strata_parked_events"] {
                transaction
                    .execute(&format!("DELETE FROM {table} WHERE projection = $1"), &[&projection])
                    .await?;
                transaction
                    .execute(
                        &format!("UPDATE {table} SET projection = $1 WHERE projection = $2"),
                        &[&projection, &key],
                    )
                    .await?;
            }
            for spec in tables {
                transaction
                    .batch_execute(&tables::swap(spec, spec.name, &Slot::Rebuild.table(spec.name)))
                    .await?;
            }
            let swapped = live.next(rebuilt.position);
            move_checkpoint(transaction, projection, swapped).await?;
            // The live views are now the rebuild's, built by its version of the definition.
            transaction
                .execute(
                    "UPDATE strata_checkpoints SET version = \
                     (SELECT version FROM strata_checkpoints WHERE projection = $2) WHERE projection = $1",
                    &[&projection, &key],
                )
                .await?;
            transaction
                .execute("DELETE FROM strata_checkpoints WHERE projection = $1", &[&key])
                .await?;
            Ok(Ok(swapped))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PgDatabase;

    /// The plan of [`SELECT_VIEWS`] for `ids`, one line per row of `EXPLAIN`.
    async fn plan(client: &tokio_postgres::Client, ids: &[String]) -> String {
        let explain = format!("EXPLAIN {SELECT_VIEWS}");
        let rows = client.query(&explain, &[&"order_summary", &ids]).await.unwrap();
        rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
    }

    fn assert_probes_the_key(plan: &str) {
        assert!(plan.contains("Index Scan using strata_views_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Filter"), "{plan}");
    }

    #[tokio::test]
    async fn a_load_probes_the_key_per_view_with_or_without_statistics() {
        let Some(fixture) = strata_testkit::services::postgres().await else { return };
        let database =
            PgDatabase::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
        let client = database.pool().get().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO strata_views (projection, view_id, data, position) \
                 SELECT 'order_summary', 'o' || n, '\\x00', n FROM generate_series(1, 20000) n",
            )
            .await
            .unwrap();
        let few: Vec<String> = (5000..5060).map(|n| format!("o{n}")).collect();
        let many: Vec<String> = (2000..3000).map(|n| format!("o{n}")).collect();
        // A table new enough to have no statistics (as during a rebuild, or a young store).
        assert_probes_the_key(&plan(&client, &few).await);
        assert_probes_the_key(&plan(&client, &many).await);
        client.batch_execute("ANALYZE strata_views").await.unwrap();
        assert_probes_the_key(&plan(&client, &few).await);
        assert_probes_the_key(&plan(&client, &many).await);
    }

    /// The SQLSTATE a failed commit reports, if the server refused it.
    fn sqlstate(error: &ViewError) -> Option<&tokio_postgres::error::SqlState> {
        let ViewError::Backend(source) = error else { return None };
        match source.downcast_ref::<DbError>()? {
            DbError::Postgres(error) => error.code(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_batch_refused_by_one_of_its_writes_reports_that_write_and_leaves_nothing() {
        let Some(fixture) = strata_testkit::services::postgres().await else { return };
        let database =
            PgDatabase::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
        let views = PgViewManager::new(&database);
        let view =
            |count: u64| StoredView::current(serde_json::json!({ "count": count }), Position(2));
        // One id twice: the upsert cannot change a row twice. The statements sent after it
        // fail only because it did, and must not hide its error.
        let mut twice = Commit::new(Checkpoint::START, Position(2));
        twice.views = vec![("a".to_owned(), view(1)), ("a".to_owned(), view(2))];
        let error = views.commit("twice", Slot::Live, twice).await.unwrap_err();
        assert_eq!(
            sqlstate(&error),
            Some(&tokio_postgres::error::SqlState::CARDINALITY_VIOLATION),
            "{error:?}"
        );
        assert_eq!(views.checkpoint("twice", Slot::Live).await.unwrap(), Checkpoint::START);
        assert!(views.get::<serde_json::Value>("twice", "a").await.unwrap().is_none());
        // The connection it used is usable again.
        let mut once = Commit::new(Checkpoint::START, Position(2));
        once.views = vec![("a".to_owned(), view(1))];
        views.commit("twice", Slot::Live, once).await.unwrap();
        assert_eq!(views.checkpoint("twice", Slot::Live).await.unwrap().position, Position(2));
    }
}

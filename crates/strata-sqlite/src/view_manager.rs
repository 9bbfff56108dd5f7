//! [`SqliteViewManager`]: view instances, their tables, parked events and projection
//! checkpoints in `views.sqlite`.
//!
//! Views are stored as JSON next to the position of the last event applied to them and,
//! while parked, why. A commit writes a batch of views, table rows and parked events and the
//! projection's new checkpoint in one `IMMEDIATE` transaction, fenced on the old checkpoint
//! (the fence itself is the core's [`Checkpoint::fence`]). A rebuild's storage sits beside
//! the live one under the key `<name>#rebuild` and tables `<table>__rebuild`, and is swapped
//! in by one transaction. This module does not run projections; the runner in the core does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::table::{TableQuery, TableSpec, Value};
use strata::{
    Checkpoint, Commit, EncodedCommit, ParkedInstance, Parking, Position, ProjectionRecord,
    RebuildRecord, RecordedEvent, SkippedEvent, Slot, StoredView, ViewError, ViewManager,
    check_projection_name, decode_view, encode_commit,
};

use crate::error::{DbError, SqliteError, from_sql_integer, to_sql_integer};
use crate::event_store;
use crate::pool::{ReadPool, SharedConnection, run_blocking};
use crate::{schema, tables};

const SELECT_VIEW: &str = "SELECT data, position, parked_position, parked_error, parked_attempts, parked_at \
     FROM views WHERE projection = ?1 AND view_id = ?2";
const UPSERT_VIEW: &str = "INSERT INTO views \
     (projection, view_id, data, position, parked_position, parked_error, parked_attempts, parked_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (projection, view_id) DO UPDATE SET data = excluded.data, position = excluded.position, \
     parked_position = excluded.parked_position, parked_error = excluded.parked_error, \
     parked_attempts = excluded.parked_attempts, parked_at = excluded.parked_at";
const DELETE_VIEW: &str = "DELETE FROM views WHERE projection = ?1 AND view_id = ?2";
const SELECT_CHECKPOINT: &str =
    "SELECT position, revision, started_at, error, version FROM checkpoints WHERE projection = ?1";
const UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (projection, position, revision) VALUES (?1, ?2, ?3) \
     ON CONFLICT (projection) DO UPDATE SET position = excluded.position, revision = excluded.revision";
const COUNT_PARKED: &str =
    "SELECT count(*) FROM views WHERE projection = ?1 AND parked_position IS NOT NULL";
const SELECT_PARKED: &str = "SELECT v.view_id, v.parked_position, v.parked_error, v.parked_attempts, v.parked_at, \
     (SELECT count(*) FROM parked_events p WHERE p.projection = v.projection AND p.view_id = v.view_id) \
     FROM views v WHERE v.projection = ?1 AND v.parked_position IS NOT NULL \
     ORDER BY v.parked_position, v.view_id";
const SELECT_PARKED_EVENTS: &str = "SELECT position, aggregate_type, aggregate_id, version, event_type, \
     schema_version, payload, event_id, correlation_id, causation_id, user_id, recorded_at \
     FROM parked_events WHERE projection = ?1 AND view_id = ?2 ORDER BY position";
const INSERT_PARKED_EVENT: &str = "INSERT OR REPLACE INTO parked_events (projection, view_id, position, \
     aggregate_type, aggregate_id, version, event_type, schema_version, payload, event_id, \
     correlation_id, causation_id, user_id, recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";
const RELEASE_PARKED: &str = "DELETE FROM parked_events WHERE projection = ?1 AND view_id = ?2";
const INSERT_SKIPPED: &str = "INSERT OR IGNORE INTO skipped_events \
     (projection, view_id, position, event_type, reason, skipped_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SELECT_SKIPPED: &str = "SELECT view_id, position, event_type, reason, skipped_at \
     FROM skipped_events WHERE projection = ?1 ORDER BY skipped_at, position";

/// A [`ViewManager`] on SQLite: `views.sqlite` in the directory it is opened on.
///
/// Commits go through one write connection; reads use a pool of read connections, so
/// queries never wait for a projection's commit. Clones share one manager.
#[derive(Clone)]
pub struct SqliteViewManager {
    dir: Arc<PathBuf>,
    /// Swapped for a fresh file's when a damaged one is set aside while running.
    files: Arc<RwLock<Files>>,
    /// One repair at a time.
    repairing: Arc<tokio::sync::Mutex<()>>,
    /// The projections prepared here, with their tables and versions, to prepare again in
    /// a fresh file.
    prepared: Arc<Mutex<Prepared>>,
}

type Prepared = HashMap<String, (Vec<&'static TableSpec>, u32)>;

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under these locks is one assignment or insert: nothing half-done.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The connections to one `views.sqlite`.
#[derive(Clone)]
struct Files {
    writer: SharedConnection,
    readers: ReadPool,
}

impl Files {
    fn open(dir: &Path) -> Result<Self, SqliteError> {
        let (connection, path) = schema::open_writer(dir, &schema::VIEWS)?;
        // Views need no fsync per commit. A power cut can only lose the newest transactions,
        // and each one holds view changes together with the checkpoint they lead to: the
        // projection resumes from the older checkpoint and applies those events again,
        // exactly once. Events themselves are synced before they are answered (invariant 5,
        // `durability.rs`). This halves the fsyncs of a lone client, whose every command is
        // its own projection batch.
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|source| SqliteError::Open { path: path.clone(), source })?;
        Ok(Self { writer: SharedConnection::new(connection), readers: ReadPool::new(&path) })
    }
}

impl SqliteViewManager {
    /// Opens (or creates) `dir/views.sqlite`, creating `dir` if missing and migrating the
    /// schema. This blocks on file I/O; call it at startup, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, SqliteError> {
        Ok(Self {
            dir: Arc::new(dir.to_owned()),
            files: Arc::new(RwLock::new(Files::open(dir)?)),
            repairing: Arc::default(),
            prepared: Arc::default(),
        })
    }

    fn files(&self) -> Files {
        // Swapping the files cannot fail halfway, so a poisoned lock still holds good ones.
        self.files.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Checks every page of `views.sqlite` and, when SQLite finds it damaged, sets it aside
    /// and goes on in a fresh file: every projection's checkpoint is then gone, so each
    /// runner's next commit is fenced and it builds its views again from the log, as after
    /// a repair at start. Work already under way on the old file ends there. Reads the whole
    /// file; a rebuild asks for it, since a rebuild into a damaged file would not repair it.
    pub async fn repair_if_damaged(&self) -> Result<Option<crate::Repair>, ViewError> {
        let _one_at_a_time = self.repairing.lock().await;
        let dir = self.dir.clone();
        let found = run_blocking(move || {
            let repair = crate::repair::set_aside_if_damaged(&dir.join(schema::VIEWS.file_name))
                .map_err(|error| DbError::Repair(Box::new(error)))?;
            let Some(repair) = repair else { return Ok(None) };
            let fresh = Files::open(&dir).map_err(|error| DbError::Repair(Box::new(error)))?;
            Ok(Some((repair, fresh)))
        })
        .await
        .map_err(DbError::into_view_error)?;
        let Some((repair, fresh)) = found else { return Ok(None) };
        // The projections running here find their tables in the fresh file, as they did in
        // the old one, before anything reads it.
        let prepared: Vec<_> = locked(&self.prepared)
            .iter()
            .map(|(name, (tables, version))| (name.clone(), tables.clone(), *version))
            .collect();
        for (projection, tables, version) in prepared {
            fresh
                .writer
                .run(move |connection| {
                    let transaction =
                        connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let prepared = prepare_in(&transaction, &projection, &tables, version)?;
                    transaction.commit()?;
                    Ok(prepared)
                })
                .await
                .map_err(DbError::into_view_error)??;
        }
        *self.files.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        repair.report();
        Ok(Some(repair))
    }

    /// Opens `dir/views.sqlite` as [`open`](Self::open) does, after reading every page of
    /// it: a file SQLite finds damaged is moved aside (to `views.sqlite.damaged-<time>`) and
    /// a fresh one created, which the projections fill again from the log. The log says so;
    /// the [`Repair`] tells the caller what was found. Skips recorded in the
    /// damaged file are lost with it: their events park again, for an operator to skip.
    ///
    /// [`Repair`]: crate::Repair
    pub fn open_or_repair(dir: &Path) -> Result<(Self, Option<crate::Repair>), SqliteError> {
        let repair = crate::repair::set_aside_if_damaged(&dir.join(schema::VIEWS.file_name))?;
        if let Some(repair) = &repair {
            repair.report();
        }
        Ok((Self::open(dir)?, repair))
    }

    async fn write<T, F>(&self, work: F) -> Result<T, ViewError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<Result<T, ViewError>, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.files()
            .writer
            .run(move |connection| {
                // IMMEDIATE: the fence's read and the writes are one atomic step, so two
                // writers cannot both pass it.
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let done = work(&transaction)?;
                if done.is_ok() {
                    transaction.commit()?;
                }
                // Otherwise dropping the transaction rolls it back: nothing was written.
                Ok(done)
            })
            .await
            .map_err(DbError::into_view_error)?
    }

    async fn read<T, F>(&self, work: F) -> Result<T, ViewError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.files()
            .readers
            .run(move |connection| {
                // One read transaction: everything comes from the same snapshot.
                let transaction = connection.transaction()?;
                let found = work(&transaction)?;
                transaction.commit()?;
                Ok(found)
            })
            .await
            .map_err(DbError::into_view_error)
    }
}

impl std::fmt::Debug for SqliteViewManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteViewManager").finish_non_exhaustive()
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A stored view row: data, position and the parking columns.
type ViewRow = (Vec<u8>, i64, Option<i64>, Option<String>, Option<i64>, Option<i64>);

fn view_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ViewRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
}

fn decode<V: DeserializeOwned>(
    projection: &str,
    id: &str,
    row: ViewRow,
) -> Result<StoredView<V>, ViewError> {
    let (data, position, parked_position, error, attempts, parked_at) = row;
    let position =
        Position(from_sql_integer(position, "view position").map_err(DbError::into_view_error)?);
    let parked = match parked_position {
        Some(parked_position) => Some(Parking {
            position: Position(
                from_sql_integer(parked_position, "parked position")
                    .map_err(DbError::into_view_error)?,
            ),
            error: error.unwrap_or_default(),
            attempts: u32::try_from(attempts.unwrap_or(0)).unwrap_or(u32::MAX),
            parked_at: from_micros(parked_at.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(StoredView { view: decode_view(projection, id, &data)?, position, parked })
}

/// A checkpoint row: the slot's checkpoint, and for a rebuild when it began and why it failed;
/// the definition version that wrote it.
struct CheckpointRow {
    checkpoint: Checkpoint,
    started_at: Option<DateTime<Utc>>,
    error: Option<String>,
    version: u32,
}

fn checkpoint_row(
    transaction: &Transaction<'_>,
    key: &str,
) -> Result<Option<CheckpointRow>, DbError> {
    type Row = (i64, i64, Option<i64>, Option<String>, u32);
    let row: Option<Row> = transaction
        .prepare_cached(SELECT_CHECKPOINT)?
        .query_row([key], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })
        .optional()?;
    let Some((position, revision, started_at, error, version)) = row else { return Ok(None) };
    let checkpoint = Checkpoint {
        position: Position(from_sql_integer(position, "checkpoint")?),
        revision: from_sql_integer(revision, "checkpoint revision")?,
    };
    Ok(Some(CheckpointRow { checkpoint, started_at: started_at.map(from_micros), error, version }))
}

fn checkpoint(transaction: &Transaction<'_>, key: &str) -> Result<Checkpoint, DbError> {
    Ok(checkpoint_row(transaction, key)?.map(|row| row.checkpoint).unwrap_or_default())
}

fn set_checkpoint(transaction: &Transaction<'_>, key: &str, to: Checkpoint) -> Result<(), DbError> {
    transaction.prepare_cached(UPSERT_CHECKPOINT)?.execute(params![
        key,
        to_sql_integer(to.position.0)?,
        to_sql_integer(to.revision)?
    ])?;
    Ok(())
}

/// The running rebuild of `projection` (not a failed one).
fn running_rebuild(
    transaction: &Transaction<'_>,
    projection: &str,
) -> Result<Option<Checkpoint>, DbError> {
    Ok(checkpoint_row(transaction, &Slot::Rebuild.key(projection))?
        .filter(|row| row.started_at.is_some() && row.error.is_none())
        .map(|row| row.checkpoint))
}

fn write_commit(
    transaction: &Transaction<'_>,
    projection: &str,
    slot: Slot,
    commit: &EncodedCommit,
) -> Result<(), DbError> {
    let key = slot.key(projection);
    {
        let mut upsert = transaction.prepare_cached(UPSERT_VIEW)?;
        let mut delete = transaction.prepare_cached(DELETE_VIEW)?;
        for view in &commit.views {
            match &view.data {
                None => {
                    delete.execute(params![key, view.id])?;
                }
                Some(data) => {
                    let parked = view.parked.as_ref();
                    upsert.execute(params![
                        key,
                        view.id,
                        data,
                        to_sql_integer(view.position.0)?,
                        parked.map(|p| to_sql_integer(p.position.0)).transpose()?,
                        parked.map(|p| p.error.as_str()),
                        parked.map(|p| i64::from(p.attempts)),
                        parked.map(|p| micros(p.parked_at)),
                    ])?;
                }
            }
        }
    }
    {
        let mut release = transaction.prepare_cached(RELEASE_PARKED)?;
        for id in &commit.released {
            release.execute(params![key, id])?;
        }
        let mut insert = transaction.prepare_cached(INSERT_PARKED_EVENT)?;
        for (id, event) in &commit.parked_events {
            insert_parked(&mut insert, &key, id, event)?;
        }
        let mut skip = transaction.prepare_cached(INSERT_SKIPPED)?;
        for skipped in &commit.skipped {
            skip.execute(params![
                projection,
                skipped.view_id,
                to_sql_integer(skipped.position.0)?,
                skipped.event_type,
                skipped.reason,
                micros(skipped.skipped_at)
            ])?;
        }
    }
    tables::apply(transaction, slot, &commit.rows)?;
    set_checkpoint(transaction, &key, commit.next())
}

fn insert_parked(
    statement: &mut rusqlite::CachedStatement<'_>,
    key: &str,
    id: &str,
    event: &RecordedEvent,
) -> Result<(), DbError> {
    let metadata = &event.metadata;
    let recorded_at = metadata.recorded_at.timestamp_nanos_opt().ok_or_else(|| {
        DbError::Corrupt(format!("event {} has an unstorable time", metadata.event_id))
    })?;
    statement.execute(params![
        key,
        id,
        to_sql_integer(event.position.0)?,
        event.stream.aggregate_type,
        event.stream.id,
        to_sql_integer(event.version.0)?,
        event.event_type,
        i64::from(event.schema_version),
        event.payload,
        metadata.event_id.as_bytes().as_slice(),
        metadata.correlation_id,
        metadata.causation_id,
        metadata.user,
        recorded_at,
    ])?;
    Ok(())
}

/// Makes a projection's tables and checkpoint row where missing; the version its stored
/// views were built by.
fn prepare_in(
    transaction: &Transaction<'_>,
    projection: &str,
    tables: &[&'static TableSpec],
    version: u32,
) -> Result<Result<u32, ViewError>, DbError> {
    // Views of another version keep their tables as they are until the rebuild
    // replaces them: today's spec may not even fit them (an index on a new column).
    // Tables they lack are made, so that queries find them empty meanwhile.
    let stored = checkpoint_row(transaction, projection)?.map(|row| row.version);
    for spec in tables {
        let exists: bool = transaction.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
            [spec.name],
            |row| row.get(0),
        )?;
        if !exists || stored.is_none_or(|stored| stored == version) {
            transaction.execute_batch(&tables::create(spec, spec.name))?;
        }
    }
    if let Some(stored) = stored.filter(|stored| *stored != version) {
        return Ok(Ok(stored));
    }
    transaction.execute(
        "INSERT INTO checkpoints (projection, position, revision, version) VALUES (?1, 0, 0, ?2) \
         ON CONFLICT (projection) DO NOTHING",
        params![projection, version],
    )?;
    Ok(Ok(checkpoint_row(transaction, projection)?.map_or(version, |row| row.version)))
}

impl ViewManager for SqliteViewManager {
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
        locked(&self.prepared).insert(projection.to_owned(), (tables.to_vec(), version));
        let (projection, tables) = (projection.to_owned(), tables.to_vec());
        self.write(move |transaction| prepare_in(transaction, &projection, &tables, version)).await
    }

    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        let key = slot.key(projection);
        let ids = ids.to_vec();
        let rows = self
            .read(move |transaction| {
                let mut select = transaction.prepare_cached(SELECT_VIEW)?;
                let mut rows = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(row) = select.query_row(params![key, id], view_row).optional()? {
                        rows.push((id, row));
                    }
                }
                Ok(rows)
            })
            .await?;
        // Decoded here rather than in the blocking task, so JSON work does not hold a
        // read connection.
        rows.into_iter().map(|(id, row)| Ok((id.clone(), decode(projection, &id, row)?))).collect()
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let (key, owned_id) = (projection.to_owned(), id.to_owned());
        let row = self
            .files()
            .readers
            .run(move |connection| {
                Ok(connection
                    .prepare_cached(SELECT_VIEW)?
                    .query_row(params![key, owned_id], view_row)
                    .optional()?)
            })
            .await
            .map_err(DbError::into_view_error)?;
        row.map(|row| decode(projection, id, row)).transpose()
    }

    async fn checkpoint(&self, projection: &str, slot: Slot) -> Result<Checkpoint, ViewError> {
        let key = slot.key(projection);
        self.read(move |transaction| checkpoint(transaction, &key)).await
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        slot: Slot,
        commit: Commit<V>,
    ) -> Result<(), ViewError> {
        // Encoded first, so that no JSON work holds the write connection.
        let encoded = encode_commit(projection, commit)?;
        let projection = projection.to_owned();
        self.write(move |transaction| {
            let key = slot.key(&projection);
            if let Err(fenced) =
                Checkpoint::fence(&key, encoded.from, checkpoint(transaction, &key)?)
            {
                return Ok(Err(fenced));
            }
            write_commit(transaction, &projection, slot, &encoded)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn parked(&self, projection: &str, slot: Slot) -> Result<Vec<ParkedInstance>, ViewError> {
        let key = slot.key(projection);
        self.read(move |transaction| {
            let mut select = transaction.prepare_cached(SELECT_PARKED)?;
            let mut rows = select.query([key])?;
            let mut parked = Vec::new();
            while let Some(row) = rows.next()? {
                parked.push(ParkedInstance {
                    view_id: row.get(0)?,
                    position: Position(from_sql_integer(row.get(1)?, "parked position")?),
                    error: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    attempts: u32::try_from(row.get::<_, Option<i64>>(3)?.unwrap_or(0))
                        .unwrap_or(u32::MAX),
                    parked_at: from_micros(row.get::<_, Option<i64>>(4)?.unwrap_or(0)),
                    events: from_sql_integer(row.get(5)?, "parked events")?,
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
        let (key, id) = (slot.key(projection), id.to_owned());
        self.read(move |transaction| {
            let mut select = transaction.prepare_cached(SELECT_PARKED_EVENTS)?;
            let mut rows = select.query(params![key, id])?;
            let mut events = Vec::new();
            while let Some(row) = rows.next()? {
                events.push(event_store::decode(row)?);
            }
            Ok(events)
        })
        .await
    }

    async fn skipped(&self, projection: &str) -> Result<Vec<SkippedEvent>, ViewError> {
        let projection = projection.to_owned();
        self.read(move |transaction| {
            let mut select = transaction.prepare_cached(SELECT_SKIPPED)?;
            let mut rows = select.query([projection])?;
            let mut skipped = Vec::new();
            while let Some(row) = rows.next()? {
                skipped.push(SkippedEvent {
                    view_id: row.get(0)?,
                    position: Position(from_sql_integer(row.get(1)?, "skipped position")?),
                    event_type: row.get(2)?,
                    reason: row.get(3)?,
                    skipped_at: from_micros(row.get(4)?),
                });
            }
            Ok(skipped)
        })
        .await
    }

    async fn record(&self, projection: &str) -> Result<ProjectionRecord, ViewError> {
        let projection = projection.to_owned();
        self.read(move |transaction| {
            let live = checkpoint_row(transaction, &projection)?;
            let parked: i64 = transaction
                .prepare_cached(COUNT_PARKED)?
                .query_row([&projection], |row| row.get(0))?;
            let rebuild =
                checkpoint_row(transaction, &Slot::Rebuild.key(&projection))?.and_then(|row| {
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
                parked: from_sql_integer(parked, "parked count")?,
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
        let query = query.clone();
        self.files()
            .readers
            .run(move |connection| tables::select(connection, table, &query))
            .await
            .map_err(DbError::into_view_error)
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
        // A rebuild is how an operator repairs views; into a damaged file it could not.
        self.repair_if_damaged().await?;
        let (projection, tables) = (projection.to_owned(), tables.to_vec());
        self.write(move |transaction| {
            if running_rebuild(transaction, &projection)?.is_some() {
                return Ok(Err(ViewError::RebuildInProgress(projection)));
            }
            let key = Slot::Rebuild.key(&projection);
            transaction.execute("DELETE FROM views WHERE projection = ?1", [&key])?;
            transaction.execute("DELETE FROM parked_events WHERE projection = ?1", [&key])?;
            for spec in &tables {
                let name = Slot::Rebuild.table(spec.name);
                transaction.execute_batch(&format!("DROP TABLE IF EXISTS {name};"))?;
                transaction.execute_batch(&tables::create(spec, &name))?;
            }
            let begun = Checkpoint { position: Position::START, revision: checkpoint(transaction, &key)?.revision + 1 };
            transaction.execute(
                "INSERT INTO checkpoints (projection, position, revision, started_at, error, version) \
                 VALUES (?1, 0, ?2, ?3, NULL, ?4) \
                 ON CONFLICT (projection) DO UPDATE SET position = 0, revision = excluded.revision, \
                 started_at = excluded.started_at, error = NULL, version = excluded.version",
                params![key, to_sql_integer(begun.revision)?, micros(started_at), version],
            )?;
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
        let (projection, error) = (projection.to_owned(), error.to_owned());
        self.write(move |transaction| {
            let key = Slot::Rebuild.key(&projection);
            let Some(running) = running_rebuild(transaction, &projection)? else {
                return Ok(Err(ViewError::NoRebuild(projection)));
            };
            if let Err(fenced) = Checkpoint::fence(&key, at, running) {
                return Ok(Err(fenced));
            }
            transaction.execute(
                "UPDATE checkpoints SET error = ?2 WHERE projection = ?1",
                params![key, error],
            )?;
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
        let (projection, tables) = (projection.to_owned(), tables.to_vec());
        self.write(move |transaction| {
            let key = Slot::Rebuild.key(&projection);
            let Some(running) = running_rebuild(transaction, &projection)? else {
                return Ok(Err(ViewError::NoRebuild(projection)));
            };
            let live_now = checkpoint(transaction, &projection)?;
            if let Err(fenced) = Checkpoint::fence(&key, rebuilt, running)
                .and_then(|()| Checkpoint::fence(&projection, live, live_now))
            {
                return Ok(Err(fenced));
            }
            for table in ["views", "parked_events"] {
                transaction.execute(
                    &format!("DELETE FROM {table} WHERE projection = ?1"),
                    [&projection],
                )?;
                transaction.execute(
                    &format!("UPDATE {table} SET projection = ?1 WHERE projection = ?2"),
                    [&projection, &key],
                )?;
            }
            for spec in &tables {
                tables::swap(transaction, spec, spec.name, &Slot::Rebuild.table(spec.name))?;
            }
            let swapped = live.next(rebuilt.position);
            set_checkpoint(transaction, &projection, swapped)?;
            // The live views are now the rebuild's, built by its version of the definition.
            transaction.execute(
                "UPDATE checkpoints SET version = (SELECT version FROM checkpoints WHERE projection = ?2) \
                 WHERE projection = ?1",
                params![projection, key],
            )?;
            transaction.execute("DELETE FROM checkpoints WHERE projection = ?1", [&key])?;
            Ok(Ok(swapped))
        })
        .await
    }
}

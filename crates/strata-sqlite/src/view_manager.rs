//! [`SqliteViewManager`]: view instances and projection checkpoints in `views.sqlite`.
//!
//! Views are stored as JSON next to the position of the last event applied to them. A
//! commit writes a batch of views and the projection's new checkpoint in one transaction,
//! fenced on the old checkpoint. This module does not run projections; the runner in the
//! core does, and calls [`ViewManager::commit`] once per batch.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::{Position, StoredView, ViewError, ViewManager, decode_view, encode_views};

use crate::error::{DbError, SqliteError, from_sql_integer, to_sql_integer};
use crate::pool::{ReadPool, SharedConnection};
use crate::schema;

const SELECT_VIEW: &str = "SELECT data, position FROM views WHERE projection = ?1 AND view_id = ?2";
const UPSERT_VIEW: &str = "INSERT INTO views (projection, view_id, data, position) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (projection, view_id) DO UPDATE SET data = excluded.data, position = excluded.position";
const SELECT_CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE projection = ?1";
const UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2) \
     ON CONFLICT (projection) DO UPDATE SET position = excluded.position";

/// A [`ViewManager`] on SQLite: `views.sqlite` in the directory it is opened on.
///
/// Commits go through one write connection; `load`, `get` and `checkpoint` use a pool of
/// read connections, so queries never wait for a projection's commit. Clones share one
/// manager.
#[derive(Clone)]
pub struct SqliteViewManager {
    writer: SharedConnection,
    readers: ReadPool,
}

impl SqliteViewManager {
    /// Opens (or creates) `dir/views.sqlite`, creating `dir` if missing and migrating the
    /// schema. This blocks on file I/O; call it at startup, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, SqliteError> {
        let (connection, path) = schema::open_writer(dir, &schema::VIEWS)?;
        // Views need no fsync per commit. A power cut can only lose the newest transactions,
        // and each one holds view changes together with the checkpoint they lead to: the
        // projection resumes from the older checkpoint and applies those events again,
        // exactly once. Events themselves stay synchronous=FULL (invariant 5). This halves
        // the fsyncs of a lone client, whose every command is its own projection batch.
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|source| SqliteError::Open { path: path.clone(), source })?;
        Ok(Self { writer: SharedConnection::new(connection), readers: ReadPool::new(&path) })
    }
}

impl std::fmt::Debug for SqliteViewManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteViewManager").finish_non_exhaustive()
    }
}

/// A view as stored: its id, JSON and position.
type Row = (String, Vec<u8>, i64);

fn decode<V: DeserializeOwned>(
    projection: &str,
    (id, data, position): Row,
) -> Result<(String, StoredView<V>), ViewError> {
    let position =
        Position(from_sql_integer(position, "view position").map_err(DbError::into_view_error)?);
    let stored = decode_view(projection, &id, &data, position)?;
    Ok((id, stored))
}

impl ViewManager for SqliteViewManager {
    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        let owned_projection = projection.to_owned();
        let ids = ids.to_vec();
        let rows = self
            .readers
            .run(move |connection| {
                // One read transaction: every view comes from the same snapshot.
                let transaction = connection.transaction()?;
                let mut rows = Vec::with_capacity(ids.len());
                {
                    let mut select = transaction.prepare_cached(SELECT_VIEW)?;
                    for id in ids {
                        let found = select
                            .query_row(params![owned_projection, id], |row| {
                                Ok((row.get(0)?, row.get(1)?))
                            })
                            .optional()?;
                        if let Some((data, position)) = found {
                            rows.push((id, data, position));
                        }
                    }
                }
                transaction.commit()?;
                Ok(rows)
            })
            .await
            .map_err(DbError::into_view_error)?;
        // Decoded here rather than in the blocking task, so JSON work does not hold a
        // read connection.
        rows.into_iter().map(|row| decode(projection, row)).collect()
    }

    async fn get<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        id: &str,
    ) -> Result<Option<StoredView<V>>, ViewError> {
        let (owned_projection, owned_id) = (projection.to_owned(), id.to_owned());
        let row = self
            .readers
            .run(move |connection| {
                let found = connection
                    .prepare_cached(SELECT_VIEW)?
                    .query_row(params![owned_projection, owned_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                Ok(found.map(|(data, position)| (owned_id, data, position)))
            })
            .await
            .map_err(DbError::into_view_error)?;
        row.map(|row| decode(projection, row).map(|(_, stored)| stored)).transpose()
    }

    async fn checkpoint(&self, projection: &str) -> Result<Position, ViewError> {
        let projection = projection.to_owned();
        self.readers
            .run(move |connection| {
                let stored: Option<i64> = connection
                    .prepare_cached(SELECT_CHECKPOINT)?
                    .query_row([projection], |row| row.get(0))
                    .optional()?;
                Ok(Position(from_sql_integer(stored.unwrap_or(0), "checkpoint")?))
            })
            .await
            .map_err(DbError::into_view_error)
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        from: Position,
        to: Position,
        views: Vec<(String, StoredView<V>)>,
    ) -> Result<(), ViewError> {
        // Encoded first, so that no JSON work holds the write connection.
        let encoded = encode_views(projection, views)?;
        let projection = projection.to_owned();
        self.writer
            .run(move |connection| {
                // IMMEDIATE: the checkpoint read and the writes are one atomic step, so two
                // runners cannot both pass the fence.
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let actual: Option<i64> = transaction
                    .prepare_cached(SELECT_CHECKPOINT)?
                    .query_row([&projection], |row| row.get(0))
                    .optional()?;
                let actual = Position(from_sql_integer(actual.unwrap_or(0), "checkpoint")?);
                if actual != from {
                    // Dropping the transaction rolls it back; nothing was written anyway.
                    return Ok(Err(ViewError::Fenced { projection, expected: from, actual }));
                }
                {
                    let mut upsert = transaction.prepare_cached(UPSERT_VIEW)?;
                    for view in &encoded {
                        upsert.execute(params![
                            projection,
                            view.id,
                            view.data,
                            to_sql_integer(view.position.0)?
                        ])?;
                    }
                    transaction
                        .prepare_cached(UPSERT_CHECKPOINT)?
                        .execute(params![projection, to_sql_integer(to.0)?])?;
                }
                transaction.commit()?;
                Ok(Ok(()))
            })
            .await
            .map_err(DbError::into_view_error)?
    }
}

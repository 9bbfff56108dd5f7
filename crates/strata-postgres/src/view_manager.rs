//! [`PgViewManager`]: view instances and projection checkpoints in `strata_views` and
//! `strata_checkpoints`.
//!
//! Views are stored as JSON bytes next to the position of the last event applied to them.
//! A commit moves the checkpoint and writes the batch's views in one transaction, and the
//! checkpoint moves only if it still holds the batch's starting point: a conditional
//! `UPDATE … WHERE position = from` (or, from the start, an insert that only an absent or
//! zero checkpoint lets through). Under READ COMMITTED a second runner racing from the same
//! checkpoint waits for the first one's row lock, re-checks the condition against the
//! committed row, finds it false and is fenced; nothing of its batch is written. This module
//! does not run projections; the runner in the core does, and calls [`ViewManager::commit`]
//! once per batch.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::{Position, StoredView, ViewError, ViewManager, decode_view, encode_views};

use crate::database::PgDatabase;
use crate::error::{DbError, PgError, from_bigint, to_bigint};

const SELECT_VIEWS: &str = "SELECT view_id, data, position FROM strata_views \
     WHERE projection = $1 AND view_id = ANY($2)";
const SELECT_VIEW: &str =
    "SELECT data, position FROM strata_views WHERE projection = $1 AND view_id = $2";
const UPSERT_VIEWS: &str = "INSERT INTO strata_views (projection, view_id, data, position) \
     SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bigint[]) \
     ON CONFLICT (projection, view_id) DO UPDATE \
     SET data = excluded.data, position = excluded.position";
const SELECT_CHECKPOINT: &str = "SELECT position FROM strata_checkpoints WHERE projection = $1";
const MOVE_CHECKPOINT: &str =
    "UPDATE strata_checkpoints SET position = $3 WHERE projection = $1 AND position = $2";
/// From the start, the checkpoint row may be missing (never committed) or hold zero.
const START_CHECKPOINT: &str = "INSERT INTO strata_checkpoints (projection, position) \
     VALUES ($1, $2) ON CONFLICT (projection) DO UPDATE SET position = excluded.position \
     WHERE strata_checkpoints.position = 0";

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
}

fn decode<V: DeserializeOwned>(
    projection: &str,
    id: String,
    data: &[u8],
    position: i64,
) -> Result<(String, StoredView<V>), ViewError> {
    let position =
        Position(from_bigint(position, "view position").map_err(DbError::into_view_error)?);
    let stored = decode_view(projection, &id, data, position)?;
    Ok((id, stored))
}

impl ViewManager for PgViewManager {
    async fn load<V: DeserializeOwned + Send + 'static>(
        &self,
        projection: &str,
        ids: &[String],
    ) -> Result<HashMap<String, StoredView<V>>, ViewError> {
        // One statement, so every view comes from the same snapshot.
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_VIEWS).await?;
            Ok::<_, DbError>(client.query(&statement, &[&projection, &ids]).await?)
        };
        let rows = read.await.map_err(DbError::into_view_error)?;
        rows.iter().map(|row| decode(projection, row.get(0), row.get(1), row.get(2))).collect()
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
        let row = read.await.map_err(DbError::into_view_error)?;
        row.map(|row| decode(projection, id.to_owned(), row.get(0), row.get(1)).map(|(_, v)| v))
            .transpose()
    }

    async fn checkpoint(&self, projection: &str) -> Result<Position, ViewError> {
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_CHECKPOINT).await?;
            let stored: Option<i64> =
                client.query_opt(&statement, &[&projection]).await?.map(|row| row.get(0));
            Ok::<_, DbError>(Position(from_bigint(stored.unwrap_or(0), "checkpoint")?))
        };
        read.await.map_err(DbError::into_view_error)
    }

    async fn commit<V: Serialize + Send + Sync + 'static>(
        &self,
        projection: &str,
        from: Position,
        to: Position,
        views: Vec<(String, StoredView<V>)>,
    ) -> Result<(), ViewError> {
        // Encode everything first: a view that does not serialize fails the commit before
        // anything is written, and no JSON work holds a connection.
        let encoded = encode_views(projection, views)?;
        let mut ids = Vec::with_capacity(encoded.len());
        let mut data = Vec::with_capacity(encoded.len());
        let mut positions = Vec::with_capacity(encoded.len());
        for view in encoded {
            ids.push(view.id);
            data.push(view.data);
            positions.push(to_bigint(view.position.0));
        }
        let write = async {
            let mut client = self.database.pool().get().await?;
            let fence = if from == Position::START {
                client.prepare_cached(START_CHECKPOINT).await?
            } else {
                client.prepare_cached(MOVE_CHECKPOINT).await?
            };
            let upsert = client.prepare_cached(UPSERT_VIEWS).await?;
            let select = client.prepare_cached(SELECT_CHECKPOINT).await?;
            let transaction = client.transaction().await?;
            // The fence goes first: it takes the checkpoint row's lock, so a racing runner
            // waits here before writing any view.
            let moved = if from == Position::START {
                transaction.execute(&fence, &[&projection, &to_bigint(to.0)]).await?
            } else {
                transaction
                    .execute(&fence, &[&projection, &to_bigint(from.0), &to_bigint(to.0)])
                    .await?
            };
            if moved != 1 {
                let stored: Option<i64> =
                    transaction.query_opt(&select, &[&projection]).await?.map(|row| row.get(0));
                // Dropping the transaction rolls it back; nothing was written anyway.
                let actual = Position(from_bigint(stored.unwrap_or(0), "checkpoint")?);
                return Ok(Err(ViewError::Fenced {
                    projection: projection.to_owned(),
                    expected: from,
                    actual,
                }));
            }
            if !ids.is_empty() {
                transaction.execute(&upsert, &[&projection, &ids, &data, &positions]).await?;
            }
            transaction.commit().await?;
            Ok::<_, DbError>(Ok(()))
        };
        write.await.map_err(DbError::into_view_error)?
    }
}

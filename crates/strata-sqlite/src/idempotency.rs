//! [`SqliteIdempotencyStore`]: the first answer per idempotency key, in `views.sqlite`.
//!
//! It shares the file (and its migrations) with the view manager because both are small,
//! read-mostly state of the service, but it has its own connections and table. Expiring
//! old keys is not done here yet; `created_at` is stored so that it can be.

use std::path::Path;

use rusqlite::{OptionalExtension, params};
use strata::{IdempotencyError, IdempotencyRecord, IdempotencyStore};

use crate::error::{DbError, SqliteError};
use crate::pool::{ReadPool, SharedConnection};
use crate::schema;

const SELECT_RECORD: &str = "SELECT fingerprint, answer FROM idempotency WHERE key = ?1";
// OR IGNORE: the first record for a key wins, as the trait requires; a concurrent second
// put is not an error, it just loses.
const INSERT_RECORD: &str = "INSERT OR IGNORE INTO idempotency (key, fingerprint, answer, \
     created_at) VALUES (?1, ?2, ?3, ?4)";

/// An [`IdempotencyStore`] on SQLite: the `idempotency` table of `views.sqlite` in the
/// directory it is opened on. Clones share one store.
#[derive(Clone)]
pub struct SqliteIdempotencyStore {
    writer: SharedConnection,
    readers: ReadPool,
}

impl SqliteIdempotencyStore {
    /// Opens (or creates) `dir/views.sqlite`, creating `dir` if missing and migrating the
    /// schema. This blocks on file I/O; call it at startup, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, SqliteError> {
        let (connection, path) = schema::open_writer(dir, &schema::VIEWS)?;
        Ok(Self { writer: SharedConnection::new(connection), readers: ReadPool::new(&path) })
    }
}

impl std::fmt::Debug for SqliteIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIdempotencyStore").finish_non_exhaustive()
    }
}

impl IdempotencyStore for SqliteIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        let key = key.to_owned();
        self.readers
            .run(move |connection| {
                let record = connection
                    .prepare_cached(SELECT_RECORD)?
                    .query_row([key], |row| {
                        Ok(IdempotencyRecord { fingerprint: row.get(0)?, answer: row.get(1)? })
                    })
                    .optional()?;
                Ok(record)
            })
            .await
            .map_err(DbError::into_idempotency_error)
    }

    async fn put(&self, key: &str, record: IdempotencyRecord) -> Result<(), IdempotencyError> {
        let key = key.to_owned();
        let created_at = chrono::Utc::now().timestamp_micros();
        self.writer
            .run(move |connection| {
                connection.prepare_cached(INSERT_RECORD)?.execute(params![
                    key,
                    record.fingerprint,
                    record.answer,
                    created_at
                ])?;
                Ok(())
            })
            .await
            .map_err(DbError::into_idempotency_error)
    }
}

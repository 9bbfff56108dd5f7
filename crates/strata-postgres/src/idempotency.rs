//! [`PgIdempotencyStore`]: the first answer per idempotency key, in `strata_idempotency`.
//!
//! Several nodes share the table, so a retry that lands on another node still finds the
//! first answer. Expiring old keys is not done here yet; `created_at` is stored so that it
//! can be.

use strata::{IdempotencyError, IdempotencyRecord, IdempotencyStore};

use crate::database::PgDatabase;
use crate::error::{DbError, PgError};

const SELECT_RECORD: &str = "SELECT fingerprint, answer FROM strata_idempotency WHERE key = $1";
// DO NOTHING: the first record for a key wins, as the trait requires; a concurrent second
// put (on any node) is not an error, it just loses.
const INSERT_RECORD: &str = "INSERT INTO strata_idempotency (key, fingerprint, answer) \
     VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING";

/// An [`IdempotencyStore`] on PostgreSQL. Clones share the database's connection pool.
#[derive(Clone, Debug)]
pub struct PgIdempotencyStore {
    database: PgDatabase,
}

impl PgIdempotencyStore {
    /// An idempotency store on a migrated database.
    pub fn new(database: &PgDatabase) -> Self {
        Self { database: database.clone() }
    }

    /// Connects to `url`, migrates `schema` (see [`PgDatabase::connect`]) and opens the
    /// store.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, PgError> {
        Ok(Self::new(&PgDatabase::connect(url, schema).await?))
    }
}

impl IdempotencyStore for PgIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        let read = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(SELECT_RECORD).await?;
            let row = client.query_opt(&statement, &[&key]).await?;
            Ok::<_, DbError>(
                row.map(|row| IdempotencyRecord { fingerprint: row.get(0), answer: row.get(1) }),
            )
        };
        read.await.map_err(DbError::into_idempotency_error)
    }

    async fn put(&self, key: &str, record: IdempotencyRecord) -> Result<(), IdempotencyError> {
        let write = async {
            let client = self.database.pool().get().await?;
            let statement = client.prepare_cached(INSERT_RECORD).await?;
            client.execute(&statement, &[&key, &record.fingerprint, &record.answer]).await?;
            Ok::<_, DbError>(())
        };
        write.await.map_err(DbError::into_idempotency_error)
    }
}

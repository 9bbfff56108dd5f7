//! [`PgDatabase`]: one schema of one PostgreSQL database, migrated and ready, with the
//! connection settings and read pool that the stores built on it share.
//!
//! Every connection this crate opens (pooled, the event writer's, the listener's, a
//! lease's) pins `search_path` to the store's schema through the connection's startup
//! `options`, so no SQL here names a schema and the migrations run unchanged in any schema.
//!
//! Migrations are an ordered list of SQL files; migration `i` (from 0) leads to schema
//! version `i + 1`, recorded in `strata_migrations`. They run in one transaction that first
//! takes a transaction-level advisory lock keyed by the schema, so several nodes starting
//! at once against a new or existing schema run each migration exactly once: the first
//! applies them, the others wait for its commit and then find nothing left to do.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::PgError;

/// The migrations, oldest first. Never edit a released one: add a file.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/0001_create.sql"),
    include_str!("sql/0002_parking.sql"),
    include_str!("sql/0003_idempotency_in_the_append.sql"),
    include_str!("sql/0004_snapshots.sql"),
];

impl PgDatabase {
    /// The schema version this build migrates to: the number of migrations it knows.
    pub const SCHEMA_VERSION: usize = MIGRATIONS.len();
}

/// How many pooled connections reads, view commits and idempotency records share.
const DEFAULT_POOL_SIZE: usize = 16;

/// How long opening a connection may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Server-side bounds on every connection after migrations.
const SERVER_TIMEOUTS: &str =
    "-c statement_timeout=30s -c lock_timeout=10s -c idle_in_transaction_session_timeout=30s";

/// One schema of a PostgreSQL database, migrated to the newest version this build knows.
///
/// Cloning is cheap; clones share the pool. Open the stores on it with
/// [`PgEventStore::open`](crate::PgEventStore::open), [`PgViewManager::new`](crate::PgViewManager::new),
/// [`PgIdempotencyStore::new`](crate::PgIdempotencyStore::new) and
/// [`PgLease::try_acquire`](crate::PgLease::try_acquire).
#[derive(Clone)]
pub struct PgDatabase {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connection settings with `search_path` pinned to `schema`.
    config: Config,
    schema: String,
    pool: Pool,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

impl PgDatabase {
    /// Connects to `url` (`postgres://user@host:port/db?...` or `host=... user=...`), creates
    /// `schema` if it is missing and migrates it. With `schema` `None` the tables live in the
    /// connection's current schema (the first existing one of its `search_path`, usually
    /// `public`).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, PgError> {
        let config: Config = url.parse().map_err(PgError::InvalidUrl)?;
        Self::connect_with(config, schema).await
    }

    /// As [`PgDatabase::connect`], from parsed connection settings.
    pub async fn connect_with(mut config: Config, schema: Option<&str>) -> Result<Self, PgError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let schema = match schema {
            Some(schema) => schema.to_owned(),
            None => current_schema(&config).await?,
        };
        if !is_plain_identifier(&schema) {
            return Err(PgError::InvalidSchema(schema));
        }
        // Notices ("relation already exists, skipping" from every idempotent CREATE at
        // start) are not news; warnings and errors still reach the log.
        let settings = format!("-c search_path={schema} -c client_min_messages=warning");
        let options = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {settings}"),
            _ => settings,
        };
        config.options(options);

        let (mut client, driver) =
            connect(&config).await.map_err(|source| PgError::connect(&config, source))?;
        let migrated = migrate(&mut client, &schema).await;
        drop(client);
        // The driver ends once its client is gone; waiting closes the connection cleanly.
        let _ = driver.await;
        migrated?;
        // After migrating (building an index may take longer): every later statement, lock
        // wait and open transaction is bounded by the server too, so a stuck client (a
        // node frozen while it holds the append lock) cannot stop the others for good.
        if let Some(options) = config.get_options().map(str::to_owned) {
            config.options(format!("{options} {SERVER_TIMEOUTS}"));
        }

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool =
            Pool::builder(manager).max_size(DEFAULT_POOL_SIZE).build().map_err(PgError::Pool)?;
        Ok(Self { inner: Arc::new(Inner { config, schema, pool }) })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection settings every connection of this store uses (`search_path` pinned
    /// to [`PgDatabase::schema`]).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The shared pool of connections, for reads and short transactions.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The key of the transaction-level advisory lock every append to this schema's log
    /// takes before it draws positions. Anything that writes `strata_events` outside
    /// [`PgEventStore`](crate::PgEventStore) (an import, a test) must take it too, and
    /// assign positions as `max(position) + 1..` after taking it.
    pub fn append_lock_key(&self) -> i64 {
        lock_key("append", &self.inner.schema, "")
    }

    /// The channel on which commits are announced with `pg_notify`. The payload is
    /// `<schema>:<new head>`; the channel is shared by every schema of the database, since
    /// a channel name cannot hold a long schema name.
    pub const NOTIFY_CHANNEL: &'static str = "strata_events";
}

/// A 64-bit advisory lock key for `purpose` and `name` within `schema`. FNV-1a: stable
/// across builds and platforms (unlike `std`'s hasher), so every node derives the same key.
/// A collision between two names only makes two locks exclusive with each other, which is
/// safe; at 64 bits it does not happen in practice.
pub(crate) fn lock_key(purpose: &str, schema: &str, name: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in ["strata", purpose, schema, name] {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Whether `name` is a schema name that needs no quoting anywhere.
fn is_plain_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Opens one connection and spawns the task that drives it. The task ends when the client
/// is dropped or the connection fails.
pub(crate) async fn connect(
    config: &Config,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection ended");
        }
    });
    Ok((client, driver))
}

/// The connection's current schema, for stores opened without a schema name.
async fn current_schema(config: &Config) -> Result<String, PgError> {
    let (client, driver) =
        connect(config).await.map_err(|source| PgError::connect(config, source))?;
    let row = client
        .query_one("SELECT current_schema(), current_setting('search_path')", &[])
        .await
        .map_err(PgError::Database);
    drop(client);
    let _ = driver.await;
    let row = row?;
    if let Some(existing) = row.get::<_, Option<String>>(0) {
        return Ok(existing);
    }
    // The search_path names a schema that does not exist yet (a URL with
    // `options=-csearch_path=myschema` for a new deployment): that is the one to create.
    let search_path: String = row.get(1);
    search_path
        .split(',')
        .map(|entry| entry.trim().trim_matches('"'))
        .find(|entry| !entry.is_empty() && *entry != "$user")
        .map(str::to_owned)
        .ok_or(PgError::NoSchema)
}

/// Creates `schema` if missing and applies the migrations it lacks, in one transaction
/// under the schema's migration lock.
async fn migrate(client: &mut Client, schema: &str) -> Result<(), PgError> {
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    let transaction = client.transaction().await.map_err(PgError::Database)?;
    // Serializes every node migrating this schema: a second node waits here until the
    // first commits, then reads the version it left.
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key("migrate", schema, "")])
        .await
        .map_err(PgError::Database)?;
    // Checked rather than `CREATE SCHEMA IF NOT EXISTS`: that one demands the CREATE
    // privilege on the database even when the schema exists.
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(PgError::Database)?
        .is_some();
    if !exists {
        // `schema` is a plain identifier (checked by the caller), so it needs no quoting.
        transaction
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(PgError::Database)?;
    }
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS strata_migrations (\
                 version integer NOT NULL PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(PgError::Database)?;
    let found: i32 = transaction
        .query_one("SELECT COALESCE(max(version), 0) FROM strata_migrations", &[])
        .await
        .map_err(PgError::Database)?
        .get(0);
    if !(0..=known).contains(&found) {
        return Err(PgError::UnknownSchemaVersion { schema: schema.to_owned(), found, known });
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip_while(|(version, _)| *version <= found) {
        tracing::info!(schema, version, "migrating PostgreSQL schema");
        let failed = |source| PgError::Migration { schema: schema.to_owned(), version, source };
        transaction.batch_execute(sql).await.map_err(failed)?;
        transaction
            .execute("INSERT INTO strata_migrations (version) VALUES ($1)", &[&version])
            .await
            .map_err(failed)?;
    }
    transaction.commit().await.map_err(PgError::Database)?;
    tracing::info!(schema, version = known, "PostgreSQL schema open");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("append", "public", ""), lock_key("append", "public", ""));
        assert_ne!(lock_key("append", "a", ""), lock_key("append", "b", ""));
        assert_ne!(lock_key("lease", "a", "bc"), lock_key("lease", "ab", "c"));
    }

    #[test]
    fn only_plain_schema_names_pass() {
        assert!(is_plain_identifier("strata_test_1"));
        for bad in ["", "1abc", "Public", "a-b", "a b", "a\"b", &"x".repeat(64)] {
            assert!(!is_plain_identifier(bad), "{bad:?} must be refused");
        }
    }
}

//! Errors of this crate: [`PgError`] for connecting and migrating (the only failures a
//! caller sees from this crate directly), and the internal [`DbError`] that every operation
//! uses until it is turned into the core's `StoreError`, `ViewError` or `IdempotencyError`.
//!
//! Runtime failures are not `PgError`s: the traits define their own error types, and
//! callers (the command bus, `strata-http`) only know those.

use strata::{IdempotencyError, StoreError, ViewError};
use tokio_postgres::error::SqlState;

impl PgError {
    /// A failed connection to what `config` names.
    pub(crate) fn connect(config: &tokio_postgres::Config, source: tokio_postgres::Error) -> Self {
        use tokio_postgres::config::Host;
        let ports = config.get_ports();
        let target: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect();
        let target =
            if target.is_empty() { "localhost:5432".to_owned() } else { target.join(", ") };
        PgError::Connect { target, source }
    }
}

/// Why a PostgreSQL database could not be opened, or a lease not taken.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// The schema name is not one this crate accepts. Names are limited to lowercase
    /// ASCII letters, digits and `_` (not starting with a digit, at most 63 bytes), so that
    /// they need no quoting in SQL or in the connection's `search_path` option.
    #[error(
        "schema name {0:?} is not accepted: use 1 to 63 of [a-z0-9_], not starting with a digit"
    )]
    InvalidSchema(String),
    /// No schema was given and the connection's `search_path` names no existing schema.
    #[error("no schema given and the connection's search_path names no existing schema")]
    NoSchema,
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// The host(s) and port(s) tried.
        target: String,
        /// What the driver said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement run while opening failed.
    #[error("PostgreSQL failed while opening the store: {0}")]
    Database(#[source] tokio_postgres::Error),
    /// A migration failed; the schema stays at its previous version.
    #[error("migrating schema {schema} to version {version} failed: {source}")]
    Migration {
        /// The schema migrated.
        schema: String,
        /// The version the failed migration leads to.
        version: i32,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema was migrated by a newer Strata than this build.
    #[error(
        "schema {schema} is at version {found}, but this build of Strata only knows versions \
         0 to {known}; it was probably written by a newer Strata, so it is left untouched"
    )]
    UnknownSchemaVersion {
        /// The schema.
        schema: String,
        /// The newest version recorded in `strata_migrations`.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// The connection pool could not be built.
    #[error("cannot build the PostgreSQL connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    /// A connection could not be taken from the pool.
    #[error("no PostgreSQL connection available: {0}")]
    PoolGet(#[source] deadpool_postgres::PoolError),
}

/// A failure inside an operation, before it is mapped to the trait's error type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// The driver or the server failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored row holds a value no valid write produces.
    #[error("{0}")]
    Corrupt(String),
    /// The server did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl DbError {
    pub(crate) fn into_store_error(self) -> StoreError {
        match self {
            DbError::Corrupt(message) => StoreError::Corrupt(message),
            other => StoreError::Backend(Box::new(other)),
        }
    }

    pub(crate) fn into_view_error(self) -> ViewError {
        ViewError::Backend(Box::new(self))
    }

    pub(crate) fn into_idempotency_error(self) -> IdempotencyError {
        IdempotencyError(Box::new(self))
    }
}

/// The name of the unique constraint `error` violated, if it is a unique violation. Matched
/// by SQLSTATE and constraint name, never by message text, which is translated and reworded
/// between server versions.
pub(crate) fn violated_unique_constraint(error: &tokio_postgres::Error) -> Option<&str> {
    if error.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return None;
    }
    error.as_db_error().and_then(|db| db.constraint())
}

/// Converts a count or position to PostgreSQL's bigint. Values above `i64::MAX` cannot occur
/// in practice (they would need 2^63 events), so they saturate and find nothing.
pub(crate) fn to_bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Converts a stored bigint back to a count or position; negative values are corruption.
pub(crate) fn from_bigint(value: i64, what: &str) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| DbError::Corrupt(format!("stored {what} {value} is negative")))
}

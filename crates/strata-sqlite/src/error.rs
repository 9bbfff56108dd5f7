//! Errors of this crate: [`SqliteError`] for opening a database (the only failures a caller
//! sees from this crate directly), and the internal [`DbError`] that every operation uses
//! until it is turned into the core's `StoreError` or `ViewError`.
//!
//! Runtime failures are not `SqliteError`s: the traits define their own error types, and
//! callers (the command bus, `strata-http`) only know those.

use std::path::PathBuf;

use strata::{StoreError, ViewError};

/// Why a SQLite database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The directory meant to hold the database files could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open or configure the database file.
    #[error("cannot open SQLite database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process (or another store in this one) already writes this event log. Two
    /// writers would each believe they own the head and the stream versions.
    #[error("the event store in {path} is already open for writing by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A damaged database file could not be moved aside.
    #[error("cannot move the damaged {path} aside: {source}")]
    SetAside {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The database refused write-ahead logging, which concurrent reads and group commit
    /// rely on (this happens, for example, on file systems without shared memory).
    #[error("SQLite database {path} refuses WAL journal mode (it reports {mode:?})")]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The file's schema version is one this build does not know, most likely because a
    /// newer Strata wrote it. Opening it anyway could misread or damage data.
    #[error(
        "SQLite database {path} has schema version {found}, but this build of Strata only \
         knows versions 0 to {known}; it was probably written by a newer Strata, so it is \
         left untouched (upgrade Strata, or point it at another directory)"
    )]
    UnknownSchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The `user_version` stored in the file.
        found: i64,
        /// The newest schema version this build knows.
        known: i64,
    },
    /// A store opened for reading only does not exist.
    #[error("there is no SQLite store at {path}")]
    Missing {
        /// The database file looked for.
        path: PathBuf,
    },
    /// A store opened for reading only has an older schema, which only a writer migrates.
    #[error(
        "SQLite database {path} has schema version {found}, older than this build's {known}; \
         start `strata serve` on it once to migrate it"
    )]
    NotMigrated {
        /// The database file.
        path: PathBuf,
        /// The `user_version` stored in the file.
        found: i64,
        /// The schema version this build reads.
        known: i64,
    },
    /// A migration failed; the database stays at its previous schema version.
    #[error("migrating SQLite database {path} to schema version {version} failed: {source}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The schema version the failed migration leads to.
        version: i64,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The event store's writer thread could not be started.
    #[error("cannot start the event store's writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
    /// The event log's write-ahead log could not be synced to disk at opening.
    #[error("cannot sync the write-ahead log of {path} to disk: {source}")]
    Sync {
        /// The database file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
}

/// A failure inside an operation, before it is mapped to the trait's error type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// The driver failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row holds a value no valid write produces.
    #[error("{0}")]
    Corrupt(String),
    /// The blocking task never ran because the runtime is shutting down.
    #[error("the database task was cancelled because the runtime is shutting down")]
    Cancelled,
    /// A damaged file could not be set aside, or a fresh one not opened in its place.
    #[error("cannot repair the damaged file: {0}")]
    Repair(#[source] Box<SqliteError>),
}

impl DbError {
    /// A value read back from a row that cannot be what was written: wrong column type, a
    /// number out of range, a malformed id. Such rows are corruption, not driver failures.
    fn is_bad_value(&self) -> bool {
        matches!(
            self,
            DbError::Corrupt(_)
                | DbError::Sqlite(
                    rusqlite::Error::InvalidColumnType(..)
                        | rusqlite::Error::FromSqlConversionFailure(..)
                        | rusqlite::Error::IntegralValueOutOfRange(..)
                )
        )
    }

    pub(crate) fn into_store_error(self) -> StoreError {
        if self.is_bad_value() {
            StoreError::Corrupt(self.to_string())
        } else {
            StoreError::Backend(Box::new(self))
        }
    }

    pub(crate) fn into_view_error(self) -> ViewError {
        ViewError::Backend(Box::new(self))
    }
}

/// Converts a count or position to SQLite's integer type. Values above `i64::MAX` cannot
/// occur in practice (they would need 2^63 events), so they fail the statement rather than
/// wrap around.
pub(crate) fn to_sql_integer(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

/// Converts a stored integer back to a count or position; negative values are corruption.
pub(crate) fn from_sql_integer(value: i64, what: &str) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| DbError::Corrupt(format!("stored {what} {value} is negative")))
}

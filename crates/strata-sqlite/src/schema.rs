//! Opening the two database files: connection settings (WAL, `synchronous=FULL` until the
//! opener says otherwise, busy timeout) and schema migrations, versioned with
//! `PRAGMA user_version`.
//!
//! Migrations are an ordered list of SQL files; migration `i` (from 0) leads to schema
//! version `i + 1`. A migration is never edited once released: a change is a new file.
//! This module does not run queries of the stores themselves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::error::SqliteError;

/// How long a connection waits for another connection's lock before failing with
/// `SQLITE_BUSY`. Locks are held for one transaction (milliseconds), so waiting this long
/// only happens when something is badly wrong; failing sooner would turn brief contention
/// (two processes opening the same directory) into errors.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One database file and the migrations that build its schema.
pub(crate) struct Database {
    /// The file name inside the store's directory.
    pub(crate) file_name: &'static str,
    /// The migrations, oldest first.
    pub(crate) migrations: &'static [&'static str],
}

/// `events.sqlite`: the event log and idempotency records, written only by the event store's
/// writer thread.
pub(crate) const EVENTS: Database = Database {
    file_name: "events.sqlite",
    migrations: &[
        include_str!("sql/events_0001_create.sql"),
        include_str!("sql/events_0002_idempotency.sql"),
        include_str!("sql/events_0003_snapshots.sql"),
    ],
};

/// `views.sqlite`: view instances, checkpoints, parked and skipped events.
pub(crate) const VIEWS: Database = Database {
    file_name: "views.sqlite",
    migrations: &[
        include_str!("sql/views_0001_create.sql"),
        include_str!("sql/views_0002_parking.sql"),
        include_str!("sql/views_0003_no_idempotency.sql"),
    ],
};

/// Opens `dir/<file>` for writing (creating the directory and file if missing), configures
/// it and brings its schema up to date. Returns the connection and the file's path.
pub(crate) fn open_writer(
    dir: &Path,
    database: &Database,
) -> Result<(Connection, PathBuf), SqliteError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| SqliteError::CreateDir { path: dir.to_owned(), source })?;
    let path = dir.join(database.file_name);
    let open_error = |source| SqliteError::Open { path: path.clone(), source };

    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut connection = Connection::open_with_flags(&path, flags).map_err(open_error)?;
    configure(&connection).map_err(open_error)?;
    // Refuse an unknown schema before changing anything, the journal mode included; the
    // check is repeated inside the migration transaction, where it is race-free.
    let found: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    check_known(&path, found, database.migrations)?;
    enable_wal(&connection, &path)?;
    // FULL syncs the WAL on every commit: an answered append or checkpoint survives a power
    // cut (invariant 5). NORMAL would only survive a crash of the process.
    connection.pragma_update(None, "synchronous", "FULL").map_err(open_error)?;
    migrate(&mut connection, &path, database.migrations)?;
    let version = database.migrations.len();
    tracing::info!(path = %path.display(), version, "SQLite schema open");
    Ok((connection, path))
}

/// Switches the file to write-ahead logging. WAL lets readers work while the writer
/// commits, and makes a commit one append to the log instead of a rewrite of pages. The
/// mode is stored in the file, but asking each time is cheap and covers files created
/// elsewhere.
fn enable_wal(connection: &Connection, path: &Path) -> Result<(), SqliteError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let switched = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match switched {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => return Err(SqliteError::NoWal { path: path.to_owned(), mode }),
            // SQLite does not call the busy handler for this switch: when two connections
            // create the same file at once (the view manager and the idempotency store
            // share one), the loser gets SQLITE_BUSY at once. It retries until the busy
            // timeout, as the busy handler would have; by then the file is usually in
            // WAL mode already and the switch is a no-op.
            Err(error)
                if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => return Err(SqliteError::Open { path: path.to_owned(), source }),
        }
    }
}

/// Opens `path` read-only, for a pool of reader connections.
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    configure(&connection)?;
    Ok(connection)
}

/// Settings of every connection, reading or writing.
fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // The query planner's stability guarantee: a statement keeps the plan it was prepared
    // with. Without it the bundled SQLite (built with STAT4) marks a statement to be
    // prepared again whenever some bound values might change its plan, and the writer's
    // version lookup and the log's reads were parsed anew at every execution (about 8% of
    // the CPU of W1 on SQLite). Every statement here is written for one plan anyway.
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // rusqlite keeps 16 prepared statements by default, fewer than the views' writer uses
    // in turn: seven of its own per commit and each projection table's upserts and deletes.
    // Past the cache's end the least recently used are parsed again at their next use.
    connection.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Refuses a file whose schema is not exactly the one this build writes: a reader that
/// cannot migrate must not guess at older or newer tables.
pub(crate) fn check_current(
    connection: &Connection,
    path: &Path,
    database: &Database,
) -> Result<(), SqliteError> {
    let found: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    let known = check_known(path, found, database.migrations)?;
    if found == known {
        Ok(())
    } else {
        Err(SqliteError::NotMigrated { path: path.to_owned(), found, known })
    }
}

/// Applies the migrations the file does not have yet, all in one transaction.
///
/// The transaction is `IMMEDIATE` and the version is read inside it, so two connections
/// opening the same new file at once (the view manager and the idempotency store share
/// `views.sqlite`) do not both run the migrations: the second waits, then finds them done.
fn migrate(
    connection: &mut Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<(), SqliteError> {
    let open_error = |source| SqliteError::Open { path: path.to_owned(), source };

    let transaction =
        connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(open_error)?;
    let found: i64 = transaction
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    let known = check_known(path, found, migrations)?;
    if found == known {
        return Ok(());
    }
    for (version, sql) in (1..).zip(migrations).skip_while(|(version, _)| *version <= found) {
        tracing::info!(path = %path.display(), version, "migrating SQLite schema");
        transaction.execute_batch(sql).map_err(|source| SqliteError::Migration {
            path: path.to_owned(),
            version,
            source,
        })?;
    }
    // `user_version` lives in the file header and changes with the transaction, so a crash
    // midway leaves both the tables and the version as they were.
    transaction.pragma_update(None, "user_version", known).map_err(open_error)?;
    transaction.commit().map_err(open_error)
}

/// Refuses a schema version this build has no migrations for; returns the newest it knows.
fn check_known(path: &Path, found: i64, migrations: &[&str]) -> Result<i64, SqliteError> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    if (0..=known).contains(&found) {
        Ok(known)
    } else {
        Err(SqliteError::UnknownSchemaVersion { path: path.to_owned(), found, known })
    }
}

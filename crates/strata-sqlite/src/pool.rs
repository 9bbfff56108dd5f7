//! Running blocking SQLite work from async code: [`run_blocking`] moves a closure to tokio's
//! blocking pool, [`ReadPool`] lends read-only connections, and [`SharedConnection`] is one
//! write connection behind a mutex.
//!
//! This is not the event store's write path: appends go through the writer thread in
//! `writer.rs`, which owns its connection outright.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::error::DbError;
use crate::schema;

/// How many idle read connections a pool keeps. More readers than this at once still get
/// connections (opened on demand); the surplus is closed when they are returned. Opening
/// one parses the schema, so under load (64 clients each loading an aggregate) a small pool
/// spent more time opening connections than reading.
const MAX_IDLE_READERS: usize = 32;

/// How many reads run at once on one database file. Beyond it, readers wait their turn
/// rather than open more connections: a burst of a thousand requests must not take a
/// thousand file handles (and find none left: "unable to open database file").
const MAX_READERS: usize = 64;

/// Runs `work` on tokio's blocking pool. A panic in `work` resumes in the caller, as if the
/// work had run inline; it is a bug, not an error to report.
pub(crate) async fn run_blocking<T, F>(work: F) -> Result<T, DbError>
where
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(DbError::Cancelled),
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a connection was in use cannot leave it mid-transaction: rusqlite's
    // transaction guards roll back when dropped during unwinding. So the connection is
    // still good and poisoning is ignored.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-only connections to one database file, opened on demand and reused.
#[derive(Clone)]
pub(crate) struct ReadPool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
    readers: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: Arc::new(path.to_owned()),
            idle: Arc::default(),
            readers: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
        }
    }

    /// Runs `work` with a read connection on the blocking pool.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        // The semaphore is never closed, so acquiring fails only if it were.
        let permit = self.readers.clone().acquire_owned().await.map_err(|_| DbError::Cancelled)?;
        let pool = self.clone();
        run_blocking(move || {
            let _permit = permit;
            let idle = locked(&pool.idle).pop();
            let mut connection = match idle {
                Some(connection) => connection,
                None => schema::open_reader(&pool.path)?,
            };
            let result = work(&mut connection);
            // A connection left inside a transaction (work returned early without closing
            // it) would pin an old snapshot; such a connection is closed, not reused.
            if connection.is_autocommit() {
                let mut idle = locked(&pool.idle);
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(connection);
                }
            }
            result
        })
        .await
    }
}

/// One read-write connection, used by one blocking task at a time.
#[derive(Clone)]
pub(crate) struct SharedConnection(Arc<Mutex<Connection>>);

impl SharedConnection {
    pub(crate) fn new(connection: Connection) -> Self {
        Self(Arc::new(Mutex::new(connection)))
    }

    /// Runs `work` with the connection on the blocking pool.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let shared = Arc::clone(&self.0);
        run_blocking(move || work(&mut locked(&shared))).await
    }
}

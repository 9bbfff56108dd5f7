//! The storage the service can run on: the embedded SQLite store (the default) or memory.

use std::path::Path;
use std::sync::Arc;

use strata::{InMemoryEventStore, InMemoryIdempotencyStore, InMemoryViewManager};
use strata_sqlite::{SqliteError, SqliteEventStore, SqliteIdempotencyStore, SqliteViewManager};

use crate::app::{Backend, Stores};

/// Events, views and idempotent answers in SQLite files under one data directory.
pub struct SqliteBackend;

impl Backend for SqliteBackend {
    type Events = SqliteEventStore;
    type Views = SqliteViewManager;
    type Idempotency = SqliteIdempotencyStore;
}

/// Opens (creating when missing) the SQLite stores in `dir`.
pub fn open_sqlite(dir: &Path) -> Result<Stores<SqliteBackend>, SqliteError> {
    Ok(Stores {
        events: Arc::new(SqliteEventStore::open(dir)?),
        views: Arc::new(SqliteViewManager::open(dir)?),
        idempotency: Arc::new(SqliteIdempotencyStore::open(dir)?),
    })
}

/// Everything in memory; gone when the process ends. For tests and trials.
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    type Events = InMemoryEventStore;
    type Views = InMemoryViewManager;
    type Idempotency = InMemoryIdempotencyStore;
}

/// Fresh, empty in-memory stores.
pub fn memory() -> Stores<MemoryBackend> {
    Stores {
        events: Arc::new(InMemoryEventStore::new()),
        views: Arc::new(InMemoryViewManager::new()),
        idempotency: Arc::new(InMemoryIdempotencyStore::default()),
    }
}

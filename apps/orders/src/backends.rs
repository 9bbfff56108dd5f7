//! The storage the service can run on: the embedded SQLite store (the default), PostgreSQL
//! (several nodes on one database), or memory; and, on any of them, the hot documents'
//! views in Redis.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use strata::{InMemoryEventStore, InMemoryViewManager, LocalLeases, RoutedViews};
use strata_postgres::{PgDatabase, PgError, PgEventStore, PgLeases, PgViewManager};
use strata_redis::RedisViewManager;
use strata_sqlite::{SqliteError, SqliteEventStore, SqliteViewManager};

use crate::app::{Backend, Stores};

/// Events, views and idempotent answers in SQLite files under one data directory.
pub struct SqliteBackend;

impl Backend for SqliteBackend {
    type Events = SqliteEventStore;
    type Views = SqliteViewManager;
    // One process owns a SQLite store (it holds the store's lock file), so it runs every
    // projection without asking anyone.
    type Leases = LocalLeases;
}

/// Opens (creating when missing) the SQLite stores in `dir`.
pub fn open_sqlite(dir: &Path) -> Result<Stores<SqliteBackend>, SqliteError> {
    let events = Arc::new(SqliteEventStore::open(dir)?);
    // A damaged views.sqlite is set aside and reported in the log by the manager itself.
    let (views, _repair) = SqliteViewManager::open_or_repair(dir)?;
    Ok(Stores { events, views: Arc::new(views), leases: Arc::new(LocalLeases) })
}

/// [`open_sqlite`] for a read replica: the events are a copy of the writer's log, kept
/// without an fsync per append (`SqliteEventStore::open_copy`).
pub fn open_sqlite_copy(dir: &Path) -> Result<Stores<SqliteBackend>, SqliteError> {
    let events = Arc::new(SqliteEventStore::open_copy(dir)?);
    let (views, _repair) = SqliteViewManager::open_or_repair(dir)?;
    Ok(Stores { events, views: Arc::new(views), leases: Arc::new(LocalLeases) })
}

/// Events, views and idempotent answers in one PostgreSQL schema shared by every node.
pub struct PostgresBackend;

impl Backend for PostgresBackend {
    type Events = PgEventStore;
    type Views = PgViewManager;
    type Leases = PgLeases;
}

/// Connects to `url`, creating and migrating the schema when needed. Projection leases
/// are taken in the name of `node_id`.
pub async fn open_postgres(url: &str, node_id: &str) -> Result<Stores<PostgresBackend>, PgError> {
    let database = PgDatabase::connect(url, None).await?;
    postgres_stores(&database, node_id).await
}

/// The stores of one opened schema, with leases in the name of `node_id`.
pub async fn postgres_stores(
    database: &PgDatabase,
    node_id: &str,
) -> Result<Stores<PostgresBackend>, PgError> {
    Ok(Stores {
        events: Arc::new(PgEventStore::open(database).await?),
        views: Arc::new(PgViewManager::new(database)),
        leases: Arc::new(PgLeases::new(database, node_id)),
    })
}

/// Everything in memory; gone when the process ends. For tests and trials.
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    type Events = InMemoryEventStore;
    type Views = InMemoryViewManager;
    type Leases = LocalLeases;
}

/// Fresh, empty in-memory stores.
pub fn memory() -> Stores<MemoryBackend> {
    Stores {
        events: Arc::new(InMemoryEventStore::new()),
        views: Arc::new(InMemoryViewManager::new()),
        leases: Arc::new(LocalLeases),
    }
}

/// The projections whose views `--redis` keeps in Redis: the documents read most, by id.
pub const REDIS_PROJECTIONS: [&str; 2] = ["products", "customers"];

/// Backend `B` with the views of [`REDIS_PROJECTIONS`] in Redis.
pub struct WithRedis<B>(PhantomData<B>);

impl<B: Backend> Backend for WithRedis<B> {
    type Events = B::Events;
    type Views = RoutedViews<B::Views, RedisViewManager>;
    type Leases = B::Leases;
}

/// `stores` with the views of [`REDIS_PROJECTIONS`] kept by `redis` instead.
pub fn with_redis<B: Backend>(stores: Stores<B>, redis: RedisViewManager) -> Stores<WithRedis<B>> {
    Stores {
        events: stores.events,
        views: Arc::new(routed(stores.views, redis)),
        leases: stores.leases,
    }
}

/// `views` with those of [`REDIS_PROJECTIONS`] kept by `redis` instead.
pub fn routed<M>(views: Arc<M>, redis: RedisViewManager) -> RoutedViews<M, RedisViewManager> {
    RoutedViews::new(views, Arc::new(redis), REDIS_PROJECTIONS)
}

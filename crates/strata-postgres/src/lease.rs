//! [`PgLease`]: "this node runs projection X", held as a session-level advisory lock.
//!
//! A lease is a `pg_try_advisory_lock` taken on a connection of its own and held for as long
//! as that connection lives. PostgreSQL releases it when the lease is dropped (the
//! connection closes) and when the holder dies (the server sees the socket close, or
//! terminates the backend), so another node's next `try_acquire` succeeds without any
//! timeout of ours. The holder learns that it lost the lease through [`PgLease::lost`]:
//! the connection ended, or a heartbeat query failed or hung. It must then stop running
//! the projection; the checkpoint fence (`PgViewManager::commit`) catches a holder that is
//! too slow to notice, so a lost lease never applies an event twice.
//!
//! `strata_projection_owners` records who last took each lease, so that any node can show
//! it; [`PgLease::owners`] adds whether the lock is still held, from `pg_locks`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::database::{PgDatabase, connect, lock_key};
use crate::error::PgError;

/// How often the holder checks that its connection still answers.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a heartbeat may take before the lease counts as lost.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1), pg_backend_pid()";
const RECORD_OWNER: &str = "INSERT INTO strata_projection_owners \
     (projection, owner, lock_key, acquired_at) VALUES ($1, $2, $3, now()) \
     ON CONFLICT (projection) DO UPDATE SET owner = excluded.owner, \
     lock_key = excluded.lock_key, acquired_at = excluded.acquired_at";
const OWNERS: &str = "SELECT o.projection, o.owner, o.acquired_at, EXISTS ( \
         SELECT 1 FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = ((o.lock_key >> 32) & 4294967295)::oid \
           AND l.objid = (o.lock_key & 4294967295)::oid) \
     FROM strata_projection_owners o ORDER BY o.projection";

/// An exclusive, named lease held by this process until dropped or lost.
#[derive(Debug)]
pub struct PgLease {
    name: String,
    owner: String,
    backend_pid: i32,
    lost: watch::Receiver<bool>,
    /// Owns the lease's connection; aborting it closes the connection, releasing the lock.
    keeper: JoinHandle<()>,
}

/// Who last took a lease, as any node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLeaseOwner {
    /// The lease's name (a projection or saga).
    pub name: String,
    /// The owner id given to [`PgLease::try_acquire`] (a node id).
    pub owner: String,
    /// When it was taken.
    pub acquired_at: DateTime<Utc>,
    /// Whether that lease is held right now. `false` means its holder is gone and no other
    /// node has taken it yet.
    pub held: bool,
}

impl PgLease {
    /// Takes the lease `name` for `owner` (a node id) if no one holds it; `Ok(None)` if
    /// someone does. Opens a connection that lives as long as the lease.
    pub async fn try_acquire(
        database: &PgDatabase,
        name: &str,
        owner: &str,
    ) -> Result<Option<PgLease>, PgError> {
        let mut config = database.config().clone();
        // Shows up in pg_stat_activity, so an operator can tell what the connection is for.
        config.application_name(format!("strata lease {name}"));
        let (client, driver) =
            connect(&config).await.map_err(|source| PgError::connect(&config, source))?;
        let key = lock_key("lease", database.schema(), name);
        let row = client.query_one(TRY_LOCK, &[&key]).await.map_err(PgError::Database)?;
        if !row.get::<_, bool>(0) {
            // Dropping the client closes the connection; nothing was taken.
            return Ok(None);
        }
        let backend_pid: i32 = row.get(1);
        client.execute(RECORD_OWNER, &[&name, &owner, &key]).await.map_err(PgError::Database)?;
        let (sender, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep(client, driver, sender));
        Ok(Some(PgLease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            backend_pid,
            lost,
            keeper,
        }))
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner id it was taken for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The server process id of the connection holding the lock (`pg_stat_activity.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lease is lost: its connection ended or stopped answering. The
    /// holder must stop the work the lease guards.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper is gone, which also means the connection is.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Every recorded lease of the database's schema, with whether it is held now.
    pub async fn owners(database: &PgDatabase) -> Result<Vec<PgLeaseOwner>, PgError> {
        let client = database.pool().get().await.map_err(PgError::PoolGet)?;
        let rows = client.query(OWNERS, &[]).await.map_err(PgError::Database)?;
        Ok(rows
            .iter()
            .map(|row| PgLeaseOwner {
                name: row.get(0),
                owner: row.get(1),
                acquired_at: row.get(2),
                held: row.get(3),
            })
            .collect())
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        // Drops the client, which closes the connection and so releases the lock.
        self.keeper.abort();
    }
}

/// Holds the lease's connection, and reports it lost when the connection ends or a
/// heartbeat fails. Returning drops the client, so a lease reported lost is also released.
async fn keep(client: Client, mut driver: JoinHandle<()>, lost: watch::Sender<bool>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        tokio::select! {
            _ = &mut driver => {
                tracing::warn!("lease connection ended; the lease is lost");
                break;
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "lease heartbeat failed; the lease is lost");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("lease heartbeat timed out; the lease is lost");
                        break;
                    }
                }
            }
        }
    }
    lost.send_replace(true);
}

impl strata::Lease for PgLease {
    async fn lost(&self) {
        PgLease::lost(self).await;
    }
}

/// Leases on one database for one node: what projection runners use to decide which node
/// runs what.
#[derive(Clone)]
pub struct PgLeases {
    database: PgDatabase,
    node_id: String,
}

impl PgLeases {
    /// Leases taken on `database` in the name of `node_id`.
    pub fn new(database: &PgDatabase, node_id: impl Into<String>) -> Self {
        Self { database: database.clone(), node_id: node_id.into() }
    }
}

fn lease_error(error: PgError) -> strata::LeaseError {
    strata::LeaseError(Box::new(error))
}

impl strata::Leases for PgLeases {
    type Lease = PgLease;

    async fn try_acquire(&self, name: &str) -> Result<Option<PgLease>, strata::LeaseError> {
        PgLease::try_acquire(&self.database, name, &self.node_id).await.map_err(lease_error)
    }

    async fn owner(&self, name: &str) -> Result<Option<String>, strata::LeaseError> {
        let owners = PgLease::owners(&self.database).await.map_err(lease_error)?;
        Ok(owners.into_iter().find(|o| o.name == name && o.held).map(|o| o.owner))
    }
}

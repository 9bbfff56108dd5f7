//! Leases: which node runs a projection (or, later, a saga). A projection runs only while
//! its runner holds the lease of that name, and stops as soon as the lease is lost; on every
//! other node the runner watches the projection's checkpoint instead, so queries there can
//! still wait for a position.
//!
//! The core only states the contract. A single process needs no coordination
//! ([`LocalLeases`] grants every lease at once); PostgreSQL backs it with session advisory
//! locks. A lease is a hint for efficiency, not the safety net: view commits are fenced on
//! the checkpoint, so two runners that both believe they hold a lease cannot apply an event
//! twice.

use std::future::Future;

/// Why taking or inspecting a lease failed.
#[derive(Debug, thiserror::Error)]
#[error("lease backend failed: {0}")]
pub struct LeaseError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A held lease.
pub trait Lease: Send + Sync + 'static {
    /// Completes when the lease is lost (its connection died); the holder must stop.
    fn lost(&self) -> impl Future<Output = ()> + Send;
}

/// Grants leases by name to this node.
pub trait Leases: Send + Sync + 'static {
    /// The lease type.
    type Lease: Lease;

    /// Takes lease `name` for this node if nobody holds it; `Ok(None)` if someone does.
    fn try_acquire(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Self::Lease>, LeaseError>> + Send;

    /// The node holding lease `name` now, if any.
    fn owner(&self, name: &str) -> impl Future<Output = Result<Option<String>, LeaseError>> + Send;
}

/// Leases for a single process: every lease is granted at once and never lost, so the
/// runner never needs to ask who else holds one.
#[derive(Debug, Clone, Default)]
pub struct LocalLeases;

/// A lease that is never lost.
#[derive(Debug)]
pub struct LocalLease;

impl Lease for LocalLease {
    async fn lost(&self) {
        std::future::pending::<()>().await;
    }
}

impl Leases for LocalLeases {
    type Lease = LocalLease;

    async fn try_acquire(&self, _name: &str) -> Result<Option<LocalLease>, LeaseError> {
        Ok(Some(LocalLease))
    }

    async fn owner(&self, _name: &str) -> Result<Option<String>, LeaseError> {
        // Only asked when a lease was refused, which never happens here.
        Ok(None)
    }
}

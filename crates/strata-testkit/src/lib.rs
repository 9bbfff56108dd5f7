//! Test kit for Strata backends: the contract suites that every [`EventStore`] and every
//! [`ViewManager`] must pass, and helpers for fresh, self-cleaning test resources.
//!
//! A backend proves itself by implementing a factory and calling the suite from its own
//! integration tests:
//!
//! ```text
//! strata_testkit::event_store_contract(MyFactory::new()).await;
//! strata_testkit::view_manager_contract(MyViewFactory::new()).await;
//! ```
//!
//! The view manager suite also runs real projections on the manager (over the in-memory
//! event store and the [`tally`] test domain): parking, retry, skip, handover and rebuilds
//! are promises every view manager keeps, not features of one backend.
//!
//! Backend tests that need a server get a fresh schema or database from [`services`], which
//! skips them (or, with `STRATA_REQUIRE_SERVICES=1`, fails them) when the server is down.

mod dying;
mod event_store;
pub mod leases;
mod projection;
pub mod services;
pub mod tally;
mod view_manager;

use std::future::Future;

use strata::{EventStore, IdempotencyStore, ViewManager};

pub use dying::DyingViews;
pub use event_store::{event_store_contract, read_everything, sample_event};
pub use view_manager::view_manager_contract;

/// Opens one backend's event store, always at the same location, so that a second `open`
/// after the first store was dropped shows what survived.
pub trait EventStoreFactory: Send + Sync {
    /// The store under test, which keeps idempotency records beside its events.
    type Store: EventStore + IdempotencyStore;

    /// Opens the store at this factory's location.
    fn open(&self) -> impl Future<Output = Self::Store> + Send;

    /// Whether events survive dropping the store and opening it again. The in-memory store
    /// declares `false`; every persistent backend must declare `true`.
    fn durable(&self) -> bool;
}

/// Opens one backend's view manager, always at the same location.
pub trait ViewManagerFactory: Send + Sync {
    /// The manager under test.
    type Manager: ViewManager;

    /// Opens the manager at this factory's location.
    fn open(&self) -> impl Future<Output = Self::Manager> + Send;

    /// Whether views and checkpoints survive dropping the manager and opening it again.
    fn durable(&self) -> bool;
}

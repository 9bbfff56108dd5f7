//! Strata on PostgreSQL, for several nodes sharing one database: a gap-free event store
//! ([`PgEventStore`], which also keeps idempotency records), a view manager
//! ([`PgViewManager`]) and leases that keep each projection on one node at a time
//! ([`PgLease`]).
//!
//! Everything lives in one schema of one database ([`PgDatabase`]), created and migrated
//! at start by versioned migrations (`src/sql/*.sql`) that several nodes may run at once.
//! Appends from all nodes are serialized by a transaction-level advisory lock taken once
//! per group commit, so positions are dense and commit in order: a reader following
//! `position > cursor` never steps over an event that commits later (the argument is in
//! `writer.rs`). New commits are announced with `NOTIFY` and heard by every node.
//!
//! This crate does no distribution of its own: PostgreSQL's locks, transactions and
//! notifications do it. It knows nothing of HTTP or of the orders domain. Connections are
//! made without TLS.

mod database;
mod error;
mod event_store;
mod lease;
mod listener;
mod tables;
mod view_manager;
mod writer;

pub use database::PgDatabase;
pub use error::PgError;
pub use event_store::PgEventStore;
pub use lease::{PgLease, PgLeaseOwner, PgLeases};
pub use view_manager::PgViewManager;

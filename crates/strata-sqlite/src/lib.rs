//! Strata's embedded backend: the event store (with its idempotency records) and the view
//! manager on SQLite, the default storage of the orders service.
//!
//! A store directory holds two files. `events.sqlite` is the event log and the idempotency
//! records, written only by the [`SqliteEventStore`]'s writer thread, which commits
//! concurrent appends in groups, each synced to disk (one fsync per group) by a second
//! thread before it is answered or read. `views.sqlite` holds view instances and projection
//! checkpoints ([`SqliteViewManager`]); it is a separate file so that projection commits and
//! appends never wait for each other's lock. Both files use WAL: what a caller was told is
//! committed survives a power cut, and views, which are not synced per commit, are applied
//! again from their checkpoint after one.
//!
//! This crate is for one process on one machine. Several nodes sharing a log is the
//! PostgreSQL backend's job; nothing here coordinates between processes beyond SQLite's
//! own file locks.

mod durability;
mod error;
mod event_store;
mod pool;
mod repair;
mod schema;
mod tables;
mod view_manager;
mod writer;

pub use error::SqliteError;
pub use event_store::SqliteEventStore;
pub use repair::Repair;
pub use view_manager::SqliteViewManager;

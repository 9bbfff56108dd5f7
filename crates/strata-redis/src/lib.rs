//! Strata views on Redis: [`RedisViewManager`] keeps view instances as JSON strings at
//! `{prefix}{projection}:{view_id}`, where other services can read them with a plain `GET`,
//! and keeps them exactly-once as every view manager does: a batch's instances, table rows,
//! parked events and the new checkpoint are written by one Lua script that first checks the
//! checkpoint is still the one the batch started from.
//!
//! This crate depends on the core only and knows nothing of HTTP or of any domain. It talks
//! to standalone Redis (the scripts build some keys themselves, which Redis Cluster forbids).

mod codec;
mod keys;
mod scripts;
mod view_manager;

pub use view_manager::{DEFAULT_PREFIX, RedisSetupError, RedisViewManager, check_prefix};

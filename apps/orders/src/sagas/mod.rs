//! The orders service's sagas: work that spans aggregates, run by `strata::saga`.

pub mod fulfilment;

pub use fulfilment::{FULFILMENT_TABLES, FulfilmentSaga, FulfilmentSettings};

/// The names of the service's sagas, as `/admin/projections` and `/admin/sagas` list them.
pub const NAMES: [&str; 1] = ["fulfilment"];

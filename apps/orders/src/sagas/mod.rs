//! The orders service's sagas: work that spans aggregates, run by `strata::saga`.

pub mod fulfilment;

pub use fulfilment::{FULFILMENT_TABLES, FulfilmentSaga, FulfilmentSettings};

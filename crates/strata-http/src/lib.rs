//! axum glue for Strata services: every failure as `application/problem+json`, JSON bodies
//! whose errors name the field, correlation ids, `If-Match`, `Idempotency-Key`,
//! read-your-writes waits on views, paged lists, and the operator's API ([`admin`]:
//! projections, parked instances, rebuilds, streams, audits, health and metrics) that any
//! Strata application mounts beside its own routes.
//!
//! This crate alone knows HTTP status codes: domain and store errors reach it as typed values
//! and become responses in exactly one place, [`Problem`]'s conversions.

pub mod admin;
pub mod auth;
pub mod conditional;
pub mod correlation;
pub mod every_request;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod paging;
pub mod problem;
pub mod read_only;
pub mod server;
pub mod shutdown;
pub mod wait;

pub use auth::{Required, Role, Tokens, User, guarded, require};
pub use conditional::IfMatch;
pub use correlation::{CORRELATION_HEADER, CorrelationId};
pub use every_request::{EveryRequest, EveryRequestService};
pub use idempotency::{IDEMPOTENCY_HEADER, Idempotency, IdempotencyLayer};
pub use json::JsonBody;
pub use metrics::HttpMetrics;
pub use problem::Problem;
pub use read_only::{Replica, read_only};
pub use shutdown::Shutdown;
pub use wait::{VIEW_POSITION_HEADER, ViewWait, WaitParams};

/// The largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

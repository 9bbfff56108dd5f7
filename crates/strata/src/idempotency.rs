//! Remembered answers to commands sent with a client-chosen idempotency key, so that a retry
//! returns the first answer instead of acting twice.
//!
//! The core only stores opaque answers; `strata-http` decides what a key covers (route and
//! body) and how an answer is encoded.

use std::future::Future;

/// The first answer given for a key, and what the request that got it looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// A digest of the request (route and body); a retry with another digest is refused.
    pub fingerprint: String,
    /// The encoded answer.
    pub answer: Vec<u8>,
}

/// Why the idempotency store failed.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store failed: {0}")]
pub struct IdempotencyError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Keeps the first answer per idempotency key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The record stored for `key`, if any.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>, IdempotencyError>> + Send;

    /// Stores `record` for `key` unless one exists; the first record wins.
    fn put(
        &self,
        key: &str,
        record: IdempotencyRecord,
    ) -> impl Future<Output = Result<(), IdempotencyError>> + Send;
}

//! Commands sent with a client-chosen idempotency key: a retry gets the first answer instead
//! of acting twice, whatever crashed in between.
//!
//! A command that appends records its key in the append's own transaction
//! ([`EventStore::append_claimed`](crate::EventStore::append_claimed)), with where its events
//! went, so the events and the record exist together or not at all. A retry finds the record
//! and is answered from it without deciding again. A command that appends nothing (a
//! refusal) has no transaction to share; its answer is stored afterwards with
//! [`IdempotencyStore::put_answer`], which is safe because it changed nothing.
//!
//! The core stores opaque answers and digests; `strata-http` decides what a key covers
//! (route, `If-Match` and body) and how an answer is encoded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::bus::CommandOutcome;
use crate::store::EventStore;

/// What a command carries when its request had an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The client's key.
    pub key: String,
    /// A digest of the request; a retry under the same key with another digest is refused.
    pub fingerprint: String,
    /// What the key's first command appended, when it did: the bus answers with it at once.
    pub recorded: Option<CommandOutcome>,
}

/// What is stored for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// A digest of the request that used the key first.
    pub fingerprint: String,
    /// Where the first command's events went; written in the same transaction as they were.
    pub appended: Option<CommandOutcome>,
    /// The encoded answer to a first request that appended nothing.
    pub answer: Option<Vec<u8>>,
}

/// Why the idempotency store failed.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store failed: {0}")]
pub struct IdempotencyError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The records of idempotency keys, kept by an event store: the records that matter most
/// are written by its appends ([`EventStore::append_claimed`]).
pub trait IdempotencyStore: EventStore {
    /// The record stored for `key`, if any.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>, IdempotencyError>> + Send {
        async move { self.read_claim(key).await.map_err(|error| IdempotencyError(Box::new(error))) }
    }

    /// Stores `answer` for `key` unless the key has a record; the first record wins.
    fn put_answer(
        &self,
        key: &str,
        fingerprint: &str,
        answer: Vec<u8>,
    ) -> impl Future<Output = Result<(), IdempotencyError>> + Send;

    /// Forgets up to `limit` keys recorded before `before`; returns how many it forgot.
    /// Callers loop in small steps, so that expiry never holds up appends for long.
    fn expire(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<u64, IdempotencyError>> + Send;
}

/// How many keys one expiry step forgets; small, so that on SQLite the step is one short
/// write among the appends rather than a long one in their way.
const EXPIRY_STEP: usize = 500;

/// Forgets keys recorded longer than `ttl` ago, in small steps, every `every`, for as long
/// as the returned future runs (spawn it, abort it on shutdown). A failed step is logged and
/// tried again at the next tick: expiry is housekeeping, never in an append's way.
pub async fn expire_keys<I: IdempotencyStore>(store: Arc<I>, ttl: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before =
            chrono::Duration::from_std(ttl).ok().and_then(|ttl| Utc::now().checked_sub_signed(ttl));
        let Some(before) = before else {
            tracing::warn!(?ttl, "the idempotency TTL is too long to compute; keys never expire");
            return;
        };
        let mut forgotten = 0;
        loop {
            match store.expire(before, EXPIRY_STEP).await {
                Ok(count) => {
                    forgotten += count;
                    if count < EXPIRY_STEP as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot expire old idempotency keys; trying again later");
                    break;
                }
            }
        }
        if forgotten > 0 {
            tracing::debug!(forgotten, "expired old idempotency keys");
        }
    }
}

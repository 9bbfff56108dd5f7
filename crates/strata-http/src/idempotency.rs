//! `Idempotency-Key` on commands: the first answer to a key (success or refusal) is stored,
//! and a retry with the same key, route and body gets that answer again without acting. The
//! same key with another route or body is refused with 422.
//!
//! Two requests with one key at the same time would both act, so a key in flight answers
//! 409 until the first finishes. Server failures (5xx) are not stored: a retry after one
//! should try again. What remains open: a crash after the append but before the answer is
//! stored lets a retry act again; closing that needs the record written in the append's
//! transaction.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata::{IdempotencyRecord, IdempotencyStore};

use crate::problem::Problem;

/// The header carrying the client's idempotency key.
pub static IDEMPOTENCY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

const MAX_KEY_LEN: usize = 255;

/// What the idempotency middleware needs: where answers are kept, and the keys in flight.
pub struct IdempotencyLayerState<I> {
    store: Arc<I>,
    in_flight: Mutex<HashSet<String>>,
}

impl<I> IdempotencyLayerState<I> {
    /// Keeps answers in `store`.
    pub fn new(store: Arc<I>) -> Arc<Self> {
        Arc::new(Self { store, in_flight: Mutex::new(HashSet::new()) })
    }
}

#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// Removes the key from the in-flight set however the request ends.
struct InFlight<I> {
    state: Arc<IdempotencyLayerState<I>>,
    key: String,
}

impl<I> Drop for InFlight<I> {
    fn drop(&mut self) {
        let mut keys = self.state.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.remove(&self.key);
    }
}

/// Middleware for command routes; requests without the header pass straight through.
pub async fn idempotency<I: IdempotencyStore>(
    State(state): State<Arc<IdempotencyLayerState<I>>>,
    request: Request,
    next: Next,
) -> Response {
    match answer(state, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn answer<I: IdempotencyStore>(
    state: Arc<IdempotencyLayerState<I>>,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let Some(key) = request.headers().get(&IDEMPOTENCY_HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => key.to_owned(),
        _ => {
            return Err(Problem::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
            .into_response());
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, crate::MAX_BODY_BYTES).await.map_err(|_| {
        Problem::payload_too_large(format!(
            "the body is larger than {} bytes",
            crate::MAX_BODY_BYTES
        ))
        .into_response()
    })?;
    let fingerprint = {
        let mut digest = Sha256::new();
        digest.update(parts.method.as_str());
        digest.update(b" ");
        digest.update(parts.uri.path());
        digest.update(b"\n");
        digest.update(&bytes);
        format!("{:x}", digest.finalize())
    };

    let guard = {
        let mut keys = state.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !keys.insert(key.clone()) {
            return Err(Problem::conflict(format!(
                "a request with Idempotency-Key {key:?} is still being processed"
            ))
            .into_response());
        }
        InFlight { state: state.clone(), key: key.clone() }
    };

    match state.store.get(&key).await {
        Err(error) => return Err(Problem::unavailable(&error).into_response()),
        Ok(Some(record)) if record.fingerprint != fingerprint => {
            return Err(Problem::unprocessable(format!(
                "Idempotency-Key {key:?} was already used with a different route or body"
            ))
            .into_response());
        }
        Ok(Some(record)) => return Ok(replay(&record)),
        Ok(None) => {}
    }

    // The command and the recording of its answer run in a task of their own: if the client
    // disconnects, hyper drops this future, and a command that already appended must still
    // have its answer stored, or the client's retry would act a second time.
    let request = Request::from_parts(parts, Body::from(bytes));
    let task = tokio::spawn(async move {
        let _in_flight = guard;
        let response = next.run(request).await;
        if response.status().is_server_error() {
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let stored = StoredAnswer {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        if let Ok(answer) = serde_json::to_vec(&stored)
            && let Err(error) =
                state.store.put(&key, IdempotencyRecord { fingerprint, answer }).await
        {
            tracing::warn!(%error, key, "could not remember an idempotent answer");
        }
        Response::from_parts(parts, Body::from(body))
    });
    task.await.map_err(|error| Problem::internal(&error).into_response())
}

fn replay(record: &IdempotencyRecord) -> Response {
    let Ok(stored) = serde_json::from_slice::<StoredAnswer>(&record.answer) else {
        return Problem::internal(&std::io::Error::other("stored idempotent answer is unreadable"))
            .into_response();
    };
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    if let Some(content_type) = stored.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

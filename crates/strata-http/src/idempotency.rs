//! `Idempotency-Key` on commands: a retry with the same key, route, `If-Match` and body gets
//! the first answer instead of acting again, whatever crashed in between; the same key with
//! another route, `If-Match` or body is refused with 422.
//!
//! A command that appends records the key in its append's transaction (see
//! [`strata::idempotency`]): the middleware hands the key to the handler as an
//! [`IdempotencyClaim`], and a retry whose key appended is answered by the handler from what
//! was appended, without deciding again. An answer that appended nothing (a refusal) is
//! stored after it is given. Server failures (5xx) and conflicts (409) are not stored: a retry
//! after one should try again. A key in flight on this node answers 409; on two nodes at
//! once, one appends and the other answers from its record.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, to_bytes};
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata::{IdempotencyClaim, IdempotencyRecord, IdempotencyStore};
use tower::{Layer, Service};

use crate::problem::Problem;

/// The header carrying the client's idempotency key.
pub static IDEMPOTENCY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// Set to `true` on an answer that is the first answer to the request's key, given again.
pub static REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotency-replayed");

const MAX_KEY_LEN: usize = 255;

/// The `Idempotency-Key` middleware for command routes, as a route layer:
/// `.route_layer(IdempotencyLayer::new(store))`. Requests without the header go straight to
/// the route (a hand-written service rather than axum's `from_fn`, which clones and boxes
/// the route for every request, keyed or not: most commands carry no key).
pub struct IdempotencyLayer<I> {
    state: Arc<Keys<I>>,
}

impl<I> IdempotencyLayer<I> {
    /// Keeps answers in `store`.
    pub fn new(store: Arc<I>) -> Self {
        Self { state: Arc::new(Keys { store, in_flight: Mutex::new(HashSet::new()) }) }
    }
}

impl<I> Clone for IdempotencyLayer<I> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl<S, I> Layer<S> for IdempotencyLayer<I> {
    type Service = IdempotencyService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService { inner, state: self.state.clone() }
    }
}

/// A route behind [`IdempotencyLayer`].
pub struct IdempotencyService<S, I> {
    inner: S,
    state: Arc<Keys<I>>,
}

impl<S: Clone, I> Clone for IdempotencyService<S, I> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), state: self.state.clone() }
    }
}

impl<S, I> Service<Request> for IdempotencyService<S, I>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    I: IdempotencyStore,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(key) = request.headers().get(&IDEMPOTENCY_HEADER).cloned() else {
            return Either::Left(self.inner.call(request));
        };
        // The keyed answer outlives this call: it takes the route that was made ready and
        // leaves a clone in its place.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let state = self.state.clone();
        Either::Right(Box::pin(async move {
            match answer(state, &key, request, inner).await {
                Ok(response) | Err(response) => Ok(response),
            }
        }))
    }
}

/// Where answers are kept, and the keys in flight on this node.
struct Keys<I> {
    store: Arc<I>,
    in_flight: Mutex<HashSet<String>>,
}

#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// Removes the key from the in-flight set however the request ends.
struct InFlight<I> {
    state: Arc<Keys<I>>,
    key: String,
}

impl<I> Drop for InFlight<I> {
    fn drop(&mut self) {
        let mut keys = self.state.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.remove(&self.key);
    }
}

/// The answer to a request with an `Idempotency-Key`: replayed, refused, or the route's.
async fn answer<I, S>(
    state: Arc<Keys<I>>,
    key: &HeaderValue,
    request: Request,
    mut route: S,
) -> Result<Response, Response>
where
    I: IdempotencyStore,
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let key = match key.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY_LEN
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            key.to_owned()
        }
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
        // Only when present, so that a request without If-Match has the digest it had before
        // If-Match counted: keys recorded by earlier releases keep matching their retries.
        if let Some(if_match) = parts.headers.get(header::IF_MATCH) {
            digest.update(b"\nIf-Match: ");
            digest.update(if_match.as_bytes());
        }
        // The token's subject, likewise only when there is one: one caller's key is not
        // another's to replay.
        if let Some(subject) = parts.extensions.get::<crate::auth::Subject>() {
            digest.update(b"\nSubject: ");
            digest.update(subject.0.as_bytes());
        }
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

    let recorded = match state.store.get(&key).await {
        Err(error) => return Err(Problem::unavailable(&error).into_response()),
        Ok(Some(record)) if record.fingerprint != fingerprint => {
            return Err(Problem::unprocessable(format!(
                "Idempotency-Key {key:?} was already used with a different route, If-Match or body"
            ))
            .into_response());
        }
        Ok(Some(IdempotencyRecord { answer: Some(answer), .. })) => return Ok(replay(&answer)),
        Ok(Some(record)) => record.appended,
        Ok(None) => None,
    };

    let replayed = recorded.is_some();
    let claim = IdempotencyClaim { key: key.clone(), fingerprint: fingerprint.clone(), recorded };
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(claim);
    // The command and the storing of a refusal run in a task of their own, so that a client
    // that disconnects does not cut them short.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _in_flight = guard;
        let Ok(mut response) = route.call(request).await;
        if replayed {
            // Only an answer that is the first one is a replay; a failure now (the store
            // unreachable while the route read something) is this request's own.
            if response.status().is_success() {
                let replayed = HeaderValue::from_static("true");
                response.headers_mut().insert(REPLAYED_HEADER.clone(), replayed);
            }
            return response;
        }
        let status = response.status();
        // A command that appended has its record already; storing its answer too would cost
        // a write per command for nothing (the first record wins anyway).
        if status.is_server_error() || status == StatusCode::CONFLICT || status.is_success() {
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
            && let Err(error) = state.store.put_answer(&key, &fingerprint, answer).await
        {
            tracing::warn!(%error, key, "could not remember an idempotent answer");
        }
        Response::from_parts(parts, Body::from(body))
    }));
    task.await.map_err(|error| Problem::internal(&error).into_response())
}

fn replay(answer: &[u8]) -> Response {
    let Ok(stored) = serde_json::from_slice::<StoredAnswer>(answer) else {
        return Problem::internal(&std::io::Error::other("stored idempotent answer is unreadable"))
            .into_response();
    };
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    if let Some(content_type) = stored.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response.headers_mut().insert(REPLAYED_HEADER.clone(), HeaderValue::from_static("true"));
    response
}

/// Marks `response` as the answer of an earlier request with the same key, for the outcomes
/// the middleware cannot see are replays: another request (on any node) claimed the key
/// between this one's lookup and its append, and the command answered with its outcome.
pub fn mark_replayed(response: &mut Response, outcome: &strata::CommandOutcome) {
    if outcome.replayed {
        response.headers_mut().insert(REPLAYED_HEADER.clone(), HeaderValue::from_static("true"));
    }
}

/// The request's idempotency key, for the command's context: `None` without the header.
#[derive(Debug, Clone, Default)]
pub struct Idempotency(pub Option<IdempotencyClaim>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        Ok(Self(parts.extensions.get::<IdempotencyClaim>().cloned()))
    }
}

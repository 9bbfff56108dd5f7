//! Correlation ids: taken from `X-Correlation-Id` (at most 128 visible ASCII characters) or
//! generated, handed to handlers as [`CorrelationId`], and echoed on every answer, errors
//! included, so a client can find the events and log lines its request caused. The same
//! middleware opens the request's span (method, route template, correlation id) and logs
//! each answer with its status and latency; bodies are never logged.

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::problem::Problem;

/// The header carrying the correlation id.
pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

const MAX_LEN: usize = 128;

/// The request's correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// Middleware: validates or generates the correlation id and echoes it on the answer.
pub async fn correlation_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&CORRELATION_HEADER) {
        None => Ok(uuid::Uuid::now_v7().to_string()),
        Some(value) => match value.to_str() {
            Ok(text)
                if !text.is_empty()
                    && text.len() <= MAX_LEN
                    && text.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(text.to_owned())
            }
            _ => Err(Problem::bad_request(format!(
                "X-Correlation-Id must be 1 to {MAX_LEN} visible ASCII characters"
            ))),
        },
    };
    // One span per request: every log line its handling writes carries its correlation id.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        correlation_id = %id.as_deref().unwrap_or("(invalid)"),
    );
    let started = Instant::now();
    let mut response = match &id {
        Ok(id) => {
            request.extensions_mut().insert(CorrelationId(id.clone()));
            next.run(request).instrument(span.clone()).await
        }
        Err(problem) => problem.clone().into_response(),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    span.in_scope(|| {
        // Probes come every few seconds; at info they would drown the requests people make.
        if matches!(route.as_str(), "/health" | "/metrics") {
            tracing::debug!(status, latency_ms, "request answered");
        } else {
            tracing::info!(status, latency_ms, "request answered");
        }
    });
    if let Ok(id) = &id
        && let Ok(value) = HeaderValue::from_str(id)
    {
        response.headers_mut().insert(CORRELATION_HEADER.clone(), value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        // Without the middleware (a router assembled without it) still give events an id.
        Ok(parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId(uuid::Uuid::now_v7().to_string())))
    }
}

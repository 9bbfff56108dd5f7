//! Correlation ids: taken from `X-Correlation-Id` (at most 128 visible ASCII characters) or
//! generated, handed to handlers as [`CorrelationId`], and echoed on every answer, errors
//! included, so a client can find the events and log lines its request caused
//! ([`crate::EveryRequest`] takes, makes and echoes them).

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderName;
use axum::http::request::Parts;

use crate::problem::Problem;

/// The header carrying the correlation id.
pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

const MAX_LEN: usize = 128;

/// The request's correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// The correlation id `request` names, or a fresh one; a 400 problem when the header is
/// not 1 to 128 visible ASCII characters.
pub(crate) fn requested(request: &Request) -> Result<String, Problem> {
    match request.headers().get(&CORRELATION_HEADER) {
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
    }
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

//! RFC 9457 problem details: the one shape every error answer takes.
//!
//! Each constructor documents the status it becomes. Internal failures are logged in full
//! and answered with a generic detail, so no internal detail reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use strata::{
    CommandError, ControlError, ProjectionError, Rejection, RejectionKind, StoreError, ViewError,
};

/// A problem+json answer.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem, stable for scripts to match on.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short, fixed summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong, with which field or value.
    pub detail: String,
    #[serde(skip)]
    retry_after_seconds: Option<u32>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        Self { kind, title, status: status.as_u16(), detail, retry_after_seconds: None }
    }

    /// The same problem, telling the client when to try again.
    fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// 400: the request is malformed (bad JSON, missing or mistyped field, invalid id).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:strata:problem:bad-request",
            "Malformed request",
            detail.into(),
        )
    }

    /// 401: the route needs a bearer token and the request has none that is known.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "urn:strata:problem:unauthorized",
            "Authentication required",
            detail.into(),
        )
    }

    /// 403: the request's token has a role too low for the route.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "urn:strata:problem:forbidden", "Forbidden", detail.into())
    }

    /// 404: the addressed aggregate or view does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "urn:strata:problem:not-found", "Not found", detail.into())
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "urn:strata:problem:method-not-allowed",
            "Method not allowed",
            "this route does not take that method".into(),
        )
    }

    /// 405: the node takes no commands (a read-only replica); `detail` says where to send
    /// them.
    pub fn read_only(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "urn:strata:problem:read-only",
            "Read-only node",
            detail.into(),
        )
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "urn:strata:problem:conflict",
            "Conflict with current state",
            detail.into(),
        )
    }

    /// 412: the request's `If-Match` names a version the aggregate is no longer at.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "urn:strata:problem:precondition-failed",
            "Precondition failed",
            detail.into(),
        )
    }

    /// 413: the body is larger than [`crate::MAX_BODY_BYTES`].
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:strata:problem:payload-too-large",
            "Request body too large",
            detail.into(),
        )
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "urn:strata:problem:unsupported-media-type",
            "Body must be JSON",
            detail.into(),
        )
    }

    /// 422: the request is well formed but breaks a rule.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:strata:problem:rule-broken",
            "Request breaks a rule",
            detail.into(),
        )
    }

    /// 503 with `Retry-After`: the view has not reached the asked position in time.
    pub fn view_not_ready(detail: impl Into<String>, retry_after_seconds: u32) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:strata:problem:view-not-ready",
            "View not ready",
            detail.into(),
        )
        .retry_after(retry_after_seconds)
    }

    /// 503 with `Retry-After`: the request took longer than the server allows; nothing it
    /// did is undone (reads change nothing).
    pub fn timed_out(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:strata:problem:timed-out",
            "Request timed out",
            detail.into(),
        )
        .retry_after(1)
    }

    /// 503: the view instance asked for is parked: an event could not be applied to it, so
    /// what is stored is not current. Retrying does not help until an operator acts.
    pub fn view_parked(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:strata:problem:view-parked",
            "View instance parked",
            detail.into(),
        )
    }

    /// 503: a dependency (the store) is unreachable. The cause is logged, not sent.
    pub fn unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, "store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:strata:problem:unavailable",
            "Service unavailable",
            "the store is not reachable; try again later".into(),
        )
        .retry_after(1)
    }

    /// 500: a bug or an unexpected failure. The cause is logged, not sent.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:strata:problem:internal",
            "Internal error",
            "the request failed on the server; it has been logged".into(),
        )
    }

    /// The status as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = self.retry_after_seconds;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A refused command: 404, 409 or 422 by the refusal's kind; a stale `If-Match` is 412; a
/// version race lost for the whole conflict budget and an idempotency key taken at the same
/// moment are 409; store failures are 503, the rest 500.
impl<E: Rejection + 'static> From<CommandError<E>> for Problem {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => match rejection.kind() {
                RejectionKind::NotFound => Problem::not_found(rejection.to_string()),
                RejectionKind::Conflict => Problem::conflict(rejection.to_string()),
                RejectionKind::BrokenRule => Problem::unprocessable(rejection.to_string()),
            },
            CommandError::PreconditionFailed { stream, expected, actual } => {
                Problem::precondition_failed(format!(
                    "{stream} is at version {actual}, but If-Match named version {expected}"
                ))
            }
            CommandError::Conflict { stream, actual, .. } => Problem::conflict(format!(
                "{stream} kept changing under this command (now at version {actual}); \
                 other writers won every try"
            )),
            CommandError::KeyReused(key) => Problem::unprocessable(format!(
                "Idempotency-Key {key:?} was already used with a different route, If-Match or body"
            )),
            CommandError::KeyBusy(key) => Problem::conflict(format!(
                "a request with Idempotency-Key {key:?} was being answered at the same time; \
                 send it again to get that answer"
            )),
            CommandError::Store(error) => Problem::from(error),
            other => Problem::internal(&other),
        }
    }
}

/// An operation on a projection: 404 for an instance that is not parked, 409 for a rebuild
/// already running, 503 when the stores fail or the projection kept moving, 500 for a bug
/// in the projection (rows that do not fit its tables).
impl From<ControlError> for Problem {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::NotParked { .. } => Problem::not_found(error.to_string()),
            ControlError::RebuildInProgress(_)
            | ControlError::KeepsNoViews(_)
            | ControlError::NodeLocal(_) => Problem::conflict(error.to_string()),
            ControlError::Busy(_) => Problem::view_not_ready(error.to_string(), 1),
            ControlError::View(error) => Problem::unavailable(&error),
            ControlError::Store(error) => Problem::unavailable(&error),
            ControlError::Projection(ProjectionError::View(error)) => Problem::unavailable(&error),
            ControlError::Projection(ProjectionError::Store(error)) => Problem::unavailable(&error),
            ControlError::Projection(error) => Problem::internal(&error),
        }
    }
}

/// An event store failure: 503.
impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::OutcomeUnknown(_) => {
                tracing::error!(%error, "append outcome unknown");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "urn:strata:problem:outcome-unknown",
                    "Outcome unknown",
                    "the database stopped answering while this command was being committed, so \
                     it may have been written; retry with the same Idempotency-Key to act at \
                     most once, or read the aggregate before retrying"
                        .into(),
                )
                .retry_after(1)
            }
            other => Problem::unavailable(&other),
        }
    }
}

/// A view store failure: 503.
impl From<ViewError> for Problem {
    fn from(error: ViewError) -> Self {
        Problem::unavailable(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_on_projections_map_to_their_statuses() {
        let not_parked =
            ControlError::NotParked { projection: "orders".into(), view_id: "o1".into() };
        assert_eq!(Problem::from(not_parked).status, 404);
        assert_eq!(Problem::from(ControlError::RebuildInProgress("orders".into())).status, 409);
        assert_eq!(Problem::from(ControlError::Busy("orders".into())).status, 503);
        let unknown = Problem::from(StoreError::OutcomeUnknown("cut during COMMIT".into()));
        assert_eq!((unknown.status, unknown.kind), (503, "urn:strata:problem:outcome-unknown"));
        assert_eq!(unknown.retry_after_seconds, Some(1), "retry with the same key");
        let down = ControlError::View(ViewError::Backend("gone".into()));
        let problem = Problem::from(down);
        assert_eq!(problem.status, 503);
        assert!(!problem.detail.contains("gone"), "internal causes are logged, not sent");
    }
}

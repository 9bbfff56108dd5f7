//! `If-Match: "<version>"` on a command: apply it only if the aggregate is at that version.

use axum::extract::FromRequestParts;
use axum::http::header::IF_MATCH;
use axum::http::request::Parts;
use strata::Version;

use crate::problem::Problem;

/// The version an `If-Match` header asks for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<Version>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(IF_MATCH) else { return Ok(IfMatch(None)) };
        let text = value.to_str().unwrap_or_default().trim();
        let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
        match unquoted.parse::<u64>() {
            Ok(version) => Ok(IfMatch(Some(Version(version)))),
            Err(_) => Err(Problem::bad_request(format!(
                "If-Match must be an entity tag holding a version, like \"3\"; got {text:?}"
            ))),
        }
    }
}

//! Conditional requests. `If-Match: "<version>"` on a command: apply it only if the
//! aggregate is at that version (412 otherwise, also for a tag that is no version). And on
//! reads ([`crate::EveryRequest`]): every successful `GET` or `HEAD` answer gets an `ETag` (a
//! view's version where it has one, else a digest of the body), and a request whose
//! `If-None-Match` names it is answered 304 without a body.

use axum::extract::FromRequestParts;
use axum::http::header::IF_MATCH;
use axum::http::request::Parts;
use strata::Version;

use axum::response::IntoResponse;

use crate::problem::Problem;

/// The version an `If-Match` header asks for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<Version>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(IF_MATCH) else { return Ok(IfMatch(None)) };
        let text = value.to_str().unwrap_or_default().trim();
        let quoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
        match (quoted, quoted.unwrap_or(text).parse::<u64>()) {
            (_, Ok(version)) => Ok(IfMatch(Some(Version(version)))),
            // A well-formed tag that is no version (a read's digest, say) names a state the
            // aggregate is not in: the precondition fails, as RFC 9110 says.
            (Some(_), Err(_)) => Err(Problem::precondition_failed(format!(
                "If-Match {text} is not an aggregate version; send the ETag a command answered with"
            ))),
            (None, Err(_)) => Err(Problem::bad_request(format!(
                "If-Match must be an entity tag holding a version, like \"3\"; got {text:?}"
            ))),
        }
    }
}

/// For a read's answer: gives a `200` an `ETag` when the route set none (a digest of the
/// body), and turns it into `304 Not Modified` when the request's `If-None-Match` names it.
pub(crate) async fn tagged(
    if_none_match: Option<axum::http::HeaderValue>,
    response: axum::response::Response,
) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    if response.status() != StatusCode::OK || !crate::json::small(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Problem::internal(&std::io::Error::other("the answer's body failed"))
            .into_response();
    };
    if !parts.headers.contains_key(header::ETAG) {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&bytes);
        let tag: String = digest.iter().take(12).map(|byte| format!("{byte:02x}")).collect();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{tag}\"")) {
            parts.headers.insert(header::ETAG, etag);
        }
    }
    let matches = match (&if_none_match, parts.headers.get(header::ETAG)) {
        (Some(wanted), Some(etag)) => names(wanted, etag),
        _ => false,
    };
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Whether an `If-None-Match` value names `etag`: `*`, or one of its comma-separated tags,
/// compared weakly (RFC 9110: `W/` prefixes ignored).
fn names(if_none_match: &axum::http::HeaderValue, etag: &axum::http::HeaderValue) -> bool {
    let (Ok(wanted), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else { return false };
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let etag = weak(etag);
    wanted.split(',').any(|tag| tag.trim() == "*" || weak(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_none_match_names_a_tag_weakly_in_a_list_or_with_a_star() {
        let etag = HeaderValue::from_static("\"3\"");
        for wanted in ["\"3\"", "W/\"3\"", "\"1\", \"3\"", "*"] {
            assert!(names(&HeaderValue::from_str(wanted).unwrap(), &etag), "{wanted}");
        }
        for wanted in ["\"4\"", "3", "\"33\""] {
            assert!(!names(&HeaderValue::from_str(wanted).unwrap(), &etag), "{wanted}");
        }
    }
}

//! [`JsonBody`]: a JSON request body whose failures are problem+json answers that say what
//! was wrong, with which field: 415 when the body is not JSON, 413 when it is too large, 400
//! when it is empty, malformed, or a field is missing or mistyped. And every JSON answer
//! ([`crate::EveryRequest`]) ends with a line break, as text tools and terminals expect.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Extracts and deserializes a JSON body.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        // JSON is UTF-8 (RFC 8259); a body declared in another charset would be misread.
        if let Some(charset) = declared_charset(&request)
            && !charset.eq_ignore_ascii_case("utf-8")
            && !charset.eq_ignore_ascii_case("utf8")
        {
            return Err(Problem::unsupported_media_type(format!(
                "the body must be UTF-8 JSON; charset={charset} is not accepted"
            )));
        }
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(problem_for(rejection)),
        }
    }
}

/// The `charset` parameter of the request's `Content-Type`, if it has one.
fn declared_charset(request: &Request) -> Option<String> {
    let content_type = request.headers().get(axum::http::header::CONTENT_TYPE)?.to_str().ok()?;
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn problem_for(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::unsupported_media_type(
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(error) => {
            let reason = source_text(&error);
            // serde_json's words for a body with no value at all (empty or only blanks).
            if reason.starts_with("EOF while parsing a value") {
                return Problem::bad_request("the body is empty: expected a JSON object");
            }
            Problem::bad_request(format!("the body is not valid JSON: {reason}"))
        }
        JsonRejection::JsonDataError(error) => Problem::bad_request(source_text(&error)),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::payload_too_large(format!(
                "the body is larger than {} bytes",
                crate::MAX_BODY_BYTES
            ))
        }
        other => Problem::bad_request(other.body_text()),
    }
}

/// The innermost cause's text: serde's "missing field `name`" or "lines[0].qty: invalid type"
/// instead of axum's generic prefix.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// The most a middleware buffers of an answer to finish it; larger (or unsized) answers pass
/// untouched. Views, pages and problems are far below it.
const BUFFERED: u64 = 16 * 1024 * 1024;

/// Whether `response`'s body is known to fit [`BUFFERED`].
pub(crate) fn small(response: &axum::response::Response) -> bool {
    use axum::body::HttpBody;
    response.body().size_hint().upper().is_some_and(|upper| upper <= BUFFERED)
}

/// Appends a line break to a JSON (or problem+json) answer that lacks one.
pub(crate) async fn end_with_newline(
    response: axum::response::Response,
) -> axum::response::Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/json") || value.starts_with("application/problem+json")
        });
    if !is_json || !small(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Problem::internal(&std::io::Error::other("the answer's body failed"))
            .into_response();
    };
    if bytes.ends_with(b"\n") {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut ended = Vec::with_capacity(bytes.len() + 1);
    ended.extend_from_slice(&bytes);
    ended.push(b'\n');
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(ended))
}

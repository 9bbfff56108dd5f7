//! [`JsonBody`]: a JSON request body whose failures are problem+json answers that say what
//! was wrong, with which field: 415 when the body is not JSON, 413 when it is too large, 400
//! when it is malformed or a field is missing or mistyped.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
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
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(problem_for(rejection)),
        }
    }
}

fn problem_for(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::unsupported_media_type(
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(error) => {
            Problem::bad_request(format!("the body is not valid JSON: {}", source_text(&error)))
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

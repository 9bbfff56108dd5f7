//! Aggregate ids as the API accepts them: 1 to 64 characters of `[A-Za-z0-9_-]`, generated
//! as UUID v7 when a create command omits one.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use strata_http::Problem;

const MAX_ID_LEN: usize = 64;

/// Checks `value` as the id in `field`.
pub fn check(field: &str, value: &str) -> Result<(), Problem> {
    let valid = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "{field} must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'; got {value:?}"
        )))
    }
}

/// The given id, checked, or a fresh UUID v7.
pub fn given_or_new(field: &str, value: Option<String>) -> Result<String, Problem> {
    match value {
        Some(id) => check(field, &id).map(|()| id),
        None => Ok(uuid::Uuid::now_v7().to_string()),
    }
}

/// The single id in a route's path, checked.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
        check("the id in the path", &id)?;
        Ok(PathId(id))
    }
}

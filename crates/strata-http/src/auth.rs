//! Bearer tokens with roles: `read` (queries), `write` (commands, and queries), `admin`
//! (the operator's routes and metrics, and everything else). The service keeps only each
//! token's SHA-256 and its subject; the subject of the token a request carries is the
//! `user` of every event the request causes.
//!
//! [`require`] is the middleware a route group gets: 401 (with `WWW-Authenticate: Bearer`)
//! for a missing or unknown token, 403 for a role too low, both problem+json; on success the
//! request carries the [`Subject`] for the handler.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;

use crate::Problem;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries.
    Read,
    /// Commands and queries.
    Write,
    /// Everything, the operator's routes and metrics included.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is not a role; the roles are read, write and admin")),
        }
    }
}

/// One token as the auth file keeps it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who uses the token; stored as `user` on the events its requests cause.
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// The SHA-256 of the token, as 64 lowercase hexadecimal digits.
    pub sha256: String,
}

/// The auth file: `[[tokens]]` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// Why an auth file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// Not TOML of the expected shape.
    #[error("the auth file is not valid: {0}")]
    Invalid(String),
    /// An entry that cannot be right.
    #[error("token {index} of the auth file: {why}")]
    Entry {
        /// Its place in the file, from 1.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

impl AuthFile {
    /// Parses and checks the TOML text of an auth file.
    pub fn parse(text: &str) -> Result<Self, AuthFileError> {
        let file: AuthFile =
            toml::from_str(text).map_err(|error| AuthFileError::Invalid(error.to_string()))?;
        for (index, entry) in file.tokens.iter().enumerate() {
            let why = if entry.subject.trim().is_empty() {
                Some("the subject is empty")
            } else if entry.subject.starts_with(SAGA_PREFIX) {
                Some("subjects starting with \"saga:\" name sagas")
            } else if decode_hash(&entry.sha256).is_none() {
                Some("sha256 is not 64 hexadecimal digits")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(AuthFileError::Entry { index: index + 1, why: why.to_owned() });
            }
        }
        Ok(file)
    }

    /// The file as TOML text.
    pub fn to_toml(&self) -> Result<String, AuthFileError> {
        toml::to_string(self).map_err(|error| AuthFileError::Invalid(error.to_string()))
    }
}

/// How the users of sagas' own commands begin (`saga:fulfilment`); no token's subject may.
pub const SAGA_PREFIX: &str = "saga:";

/// The SHA-256 of `token`, as an auth file writes it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0_u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// The tokens a service accepts.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], String, Role)>,
}

impl Tokens {
    /// The tokens of `file` (checked by [`AuthFile::parse`]).
    pub fn new(file: &AuthFile) -> Self {
        let entries = file
            .tokens
            .iter()
            .filter_map(|entry| {
                Some((decode_hash(&entry.sha256)?, entry.subject.clone(), entry.role))
            })
            .collect();
        Self { entries }
    }

    /// The subject and role of `token`, if it is one of these. Every entry is compared, each
    /// in constant time, so the answer's timing says nothing about how near a guess came.
    pub fn find(&self, token: &str) -> Option<(&str, Role)> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, subject, role) in &self.entries {
            let difference = hash.iter().zip(presented).fold(0_u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 && found.is_none() {
                found = Some((subject.as_str(), *role));
            }
        }
        found
    }
}

/// The subject of the token a request carried, when the service checks tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub String);

/// The request's [`Subject`], if it was authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(User(parts.extensions.get::<Subject>().map(|subject| subject.0.clone())))
    }
}

/// What a route group needs: the accepted tokens (none: every request passes) and the role.
#[derive(Debug, Clone)]
pub struct Required {
    /// The accepted tokens; `None` when the service runs without authentication.
    pub tokens: Option<Arc<Tokens>>,
    /// The role the group needs.
    pub role: Role,
}

/// The middleware that checks a request's bearer token against `required`.
pub async fn require(
    State(required): State<Required>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = required.tokens.as_deref() else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        // The scheme's name is case-insensitive (RFC 9110).
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
        .map(str::trim);
    let Some((subject, role)) = presented.and_then(|token| tokens.find(token)) else {
        let detail = if presented.is_some() {
            "the bearer token is not known"
        } else {
            "this route needs an Authorization: Bearer token"
        };
        let mut response = Problem::unauthorized(detail).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if role < required.role {
        let needed = match required.role {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        };
        return Problem::forbidden(format!("this route needs the {needed} role")).into_response();
    }
    request.extensions_mut().insert(Subject(subject.to_owned()));
    next.run(request).await
}

/// `routes` with [`require`] checking `required` on each, or `routes` as they are when the
/// service checks no tokens: a layer that would only pass requests on still clones the
/// routes' service and boxes twice for every request.
pub fn guarded<S: Clone + Send + Sync + 'static>(
    routes: OpenApiRouter<S>,
    required: Required,
) -> OpenApiRouter<S> {
    if required.tokens.is_none() {
        return routes;
    }
    routes.route_layer(axum::middleware::from_fn_with_state(required, require))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_by_its_hash_and_roles_include_the_lower_ones() {
        let file = AuthFile {
            tokens: vec![TokenEntry {
                subject: "alice".into(),
                role: Role::Write,
                sha256: token_hash("secret-1"),
            }],
        };
        let parsed = AuthFile::parse(&file.to_toml().unwrap()).unwrap();
        assert_eq!(parsed, file);
        let tokens = Tokens::new(&parsed);
        assert_eq!(tokens.find("secret-1"), Some(("alice", Role::Write)));
        assert_eq!(tokens.find("secret-2"), None);
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
    }

    #[test]
    fn bad_auth_files_are_refused_naming_the_entry() {
        let short = "[[tokens]]\nsubject = \"a\"\nrole = \"read\"\nsha256 = \"ab\"\n";
        assert!(AuthFile::parse(short).unwrap_err().to_string().contains("token 1"));
        let role = "[[tokens]]\nsubject = \"a\"\nrole = \"root\"\nsha256 = \"ab\"\n";
        assert!(AuthFile::parse(role).is_err());
        let token = "[[tokens]]\nsubject = \"a\"\nrole = \"read\"\ntoken = \"plain\"\n";
        assert!(AuthFile::parse(token).is_err(), "a plain token is never accepted");
    }
}

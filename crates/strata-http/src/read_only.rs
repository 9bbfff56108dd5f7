//! A read-only node: its command routes answer 405 without looking at the request, and
//! its queries wait for positions its copy of the log has not reached yet.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Problem;

/// Middleware for the command routes of a read-only node (a replica that follows another
/// deployment's log): every request is answered with 405 problem+json, so nothing is
/// written and no idempotency key is taken.
pub async fn read_only(_request: Request, _next: Next) -> Response {
    Problem::read_only(
        "this node is a read-only replica: it answers queries; send commands to the writer",
    )
    .into_response()
}

/// A request extension that marks a read-only replica's requests: its log is a copy that
/// may lag behind the writer's, so a `min_position` past its head is one not yet copied
/// (503, retry), not one that no command answered with (400).
#[derive(Debug, Clone, Copy)]
pub struct Replica;

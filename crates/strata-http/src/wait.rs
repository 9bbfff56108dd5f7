//! Read-your-writes: a view query may ask, with `?min_position=N`, to wait until its view has
//! reached the position a command answered with; `wait_ms` bounds the wait (default 2000,
//! at most 30000). Every view answer says where its view stands in `X-View-Position`.

use std::time::Duration;

use axum::extract::{FromRequestParts, Query};
use axum::http::HeaderName;
use axum::http::request::Parts;
use serde::Deserialize;
use strata::{EventStore, Position, ProjectionHandle};

use crate::problem::Problem;
use crate::shutdown::Shutdown;

/// The header carrying the position a view answer reflects.
pub static VIEW_POSITION_HEADER: HeaderName = HeaderName::from_static("x-view-position");

const DEFAULT_WAIT_MS: u64 = 2_000;
/// The longest wait a query may ask for.
pub(crate) const MAX_WAIT_MS: u64 = 30_000;

/// What a view query asked to wait for.
#[derive(Debug, Clone)]
pub struct ViewWait {
    /// The position the view must reach before answering.
    pub min_position: Option<Position>,
    /// How long to wait for it.
    pub wait: Duration,
    /// Ends the wait early when the service shuts down.
    pub shutdown: Option<Shutdown>,
    /// Whether this node is a read-only replica (the [`crate::Replica`] extension).
    pub replica: bool,
}

/// The query parameters of a wait, as the API describes them.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Answer only once the view reflects this position (a command's `position`).
    min_position: Option<u64>,
    /// How long to wait for `min_position`, in milliseconds: default 2000, at most 30000;
    /// then 503 with `Retry-After`.
    #[param(maximum = 30000)]
    wait_ms: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for ViewWait {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Query(raw) =
            Query::<WaitParams>::from_request_parts(parts, state).await.map_err(|_| {
                Problem::bad_request("min_position and wait_ms must be non-negative integers")
            })?;
        let wait_ms = raw.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
        if wait_ms > MAX_WAIT_MS {
            return Err(Problem::bad_request(format!(
                "wait_ms must be at most {MAX_WAIT_MS}; got {wait_ms}"
            )));
        }
        Ok(ViewWait {
            min_position: raw.min_position.map(Position),
            wait: Duration::from_millis(wait_ms),
            shutdown: parts.extensions.get::<Shutdown>().cloned(),
            replica: parts.extensions.get::<crate::Replica>().is_some(),
        })
    }
}

impl ViewWait {
    /// Waits until `projection` has reached the asked position; 503 with `Retry-After` when
    /// it does not within the wait, or the service begins to shut down meanwhile, and 400 when
    /// the position is in no log at all (`store` holds no event there: no command answered
    /// with it), except on a replica, whose copy may not hold it yet. Returns the position
    /// the view reflects.
    pub async fn until_ready<S: EventStore>(
        &self,
        projection: &ProjectionHandle,
        store: &S,
    ) -> Result<Position, Problem> {
        let Some(target) = self.min_position else { return Ok(projection.position()) };
        let shutdown = async {
            match &self.shutdown {
                Some(shutdown) => shutdown.begun().await,
                None => std::future::pending().await,
            }
        };
        let reached = tokio::select! {
            reached = projection.wait_for(target, self.wait) => reached,
            () = shutdown => {
                return Err(Problem::view_not_ready(
                    "the service is shutting down; retry on another node or once it is back",
                    1,
                ));
            }
        };
        let reached = match reached {
            Ok(position) => return Ok(position),
            Err(reached) => reached,
        };
        // The store itself, not this node's idea of its head: on a cluster another node may
        // have written the position a moment ago.
        let before = Position(target.0.saturating_sub(1));
        if self.replica {
            return Err(Problem::view_not_ready(
                format!(
                    "this replica's view {} is at position {reached}, and position {target} has \
                     not been copied here yet; retry shortly",
                    projection.name()
                ),
                1,
            ));
        }
        if let Ok(events) = store.read_all(before, 1).await
            && events.is_empty()
        {
            return Err(Problem::bad_request(format!(
                "min_position {target} is beyond the last event in the log; pass the position \
                 a command answered with"
            )));
        }
        Err(Problem::view_not_ready(
            format!(
                "view {} is at position {reached}, not yet at {target}; retry shortly",
                projection.name()
            ),
            1,
        ))
    }
}

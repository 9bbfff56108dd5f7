//! Operations routes: a stream's raw events, where the projections stand, and health.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use strata::{EventStore, ProjectionStatus, RecordedEvent, Version};
use strata_http::Problem;

use super::ids;
use crate::app::{AGGREGATE_TYPES, App, Backend};

#[derive(Serialize)]
pub struct StreamEvent {
    position: u64,
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    data: serde_json::Value,
    metadata: Metadata,
}

#[derive(Serialize)]
struct Metadata {
    event_id: String,
    correlation_id: String,
    causation_id: Option<String>,
    user: Option<String>,
    recorded_at: DateTime<Utc>,
}

impl From<RecordedEvent> for StreamEvent {
    fn from(event: RecordedEvent) -> Self {
        // Payloads of this service are JSON; anything else is shown as text, not dropped.
        let data = serde_json::from_slice(&event.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&event.payload).into_owned())
        });
        StreamEvent {
            position: event.position.0,
            version: event.version.0,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data,
            metadata: Metadata {
                event_id: event.metadata.event_id.to_string(),
                correlation_id: event.metadata.correlation_id,
                causation_id: event.metadata.causation_id,
                user: event.metadata.user,
                recorded_at: event.metadata.recorded_at,
            },
        }
    }
}

pub async fn stream<B: Backend>(
    State(app): State<Arc<App<B>>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<StreamEvent>>, Problem> {
    let Path((aggregate_type, id)) =
        path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if !AGGREGATE_TYPES.contains(&aggregate_type.as_str()) {
        return Err(Problem::not_found(format!(
            "no aggregate type {aggregate_type:?}; known types are {}",
            AGGREGATE_TYPES.join(", ")
        )));
    }
    ids::check("the id in the path", &id)?;
    let stream = strata::StreamId::new(aggregate_type, id);
    let events = app
        .events()
        .read_stream(&stream, Version::NONE)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if events.is_empty() {
        return Err(Problem::not_found(format!("stream {stream} has no events")));
    }
    Ok(Json(events.into_iter().map(StreamEvent::from).collect()))
}

pub async fn projections<B: Backend>(
    State(app): State<Arc<App<B>>>,
) -> Json<Vec<ProjectionStatus>> {
    Json(app.projection_statuses())
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    node_id: String,
}

pub async fn health<B: Backend>(State(app): State<Arc<App<B>>>) -> Result<Json<Health>, Problem> {
    // A read that touches the store proves it answers, not just that the process is up.
    app.events().read_all(app.events().head(), 1).await.map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(Health { status: "ok", node_id: app.node_id.clone() }))
}

/// `GET /metrics`: Prometheus text exposition of the store's group commits and the
/// projections' progress. Written by hand: a handful of gauges and counters do not need a
/// metrics framework.
pub async fn metrics<B: Backend>(
    State(app): State<Arc<App<B>>>,
) -> impl axum::response::IntoResponse {
    use std::fmt::Write;
    let mut out = String::new();
    let head = app.events().head();
    let _ =
        writeln!(out, "# HELP strata_store_head_position Position of the last committed event.");
    let _ = writeln!(out, "# TYPE strata_store_head_position gauge");
    let _ = writeln!(out, "strata_store_head_position {}", head.0);
    if let Some(group) = app.events().group_commit_metrics() {
        let counters = [
            (
                "strata_group_commit_groups_total",
                "Transactions committed, one fsync each.",
                group.groups,
            ),
            (
                "strata_group_commit_appends_total",
                "Appends answered by group commits.",
                group.appends,
            ),
            ("strata_group_commit_events_total", "Events written by group commits.", group.events),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP strata_group_commit_busy_seconds_total Time spent writing and committing groups.\n\
             # TYPE strata_group_commit_busy_seconds_total counter\n\
             strata_group_commit_busy_seconds_total {}",
            group.busy_micros as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP strata_group_commit_largest_group Most appends committed in one group.\n\
             # TYPE strata_group_commit_largest_group gauge\n\
             strata_group_commit_largest_group {}",
            group.largest_group
        );
    }
    let _ = writeln!(
        out,
        "# HELP strata_projection_position Position each projection's views reflect."
    );
    let _ = writeln!(out, "# TYPE strata_projection_position gauge");
    let statuses = app.projection_statuses();
    for status in &statuses {
        let _ = writeln!(
            out,
            "strata_projection_position{{projection=\"{}\"}} {}",
            status.name, status.position.0
        );
    }
    let _ = writeln!(
        out,
        "# HELP strata_projection_lag_events Events a projection is behind the head."
    );
    let _ = writeln!(out, "# TYPE strata_projection_lag_events gauge");
    for status in &statuses {
        let _ = writeln!(
            out,
            "strata_projection_lag_events{{projection=\"{}\"}} {}",
            status.name, status.lag_events
        );
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

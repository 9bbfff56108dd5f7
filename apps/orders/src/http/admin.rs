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
    Path((aggregate_type, id)): Path<(String, String)>,
) -> Result<Json<Vec<StreamEvent>>, Problem> {
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

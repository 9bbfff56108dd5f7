//! The log as stored: one stream's events (`/admin/streams/{type}/{id}`) and audits
//! (`/audit`) of one request, stream or user, newest first, found through the audit
//! projection's indexed table and read from the store by position.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{
    AuditQuery, AuditSubject, EventStore, Position, RecordedEvent, StreamId, Version, ViewManager,
};

use super::Admin;
use crate::{Problem, VIEW_POSITION_HEADER, ViewWait, paging};

/// An event as the operator's API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EventJson {
    position: u64,
    stream_type: String,
    stream_id: String,
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    /// The payload as JSON (a string of its text when it is not JSON).
    data: serde_json::Value,
    metadata: MetadataJson,
}

#[derive(Serialize, utoipa::ToSchema)]
struct MetadataJson {
    event_id: String,
    correlation_id: String,
    causation_id: Option<String>,
    user: Option<String>,
    recorded_at: DateTime<Utc>,
}

impl From<RecordedEvent> for EventJson {
    fn from(event: RecordedEvent) -> Self {
        // Payloads are usually JSON; anything else is shown as text, not dropped.
        let data = strata::codec::decode(&event.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&event.payload).into_owned())
        });
        EventJson {
            position: event.position.0,
            stream_type: event.stream.aggregate_type,
            stream_id: event.stream.id,
            version: event.version.0,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data,
            metadata: MetadataJson {
                event_id: event.metadata.event_id.to_string(),
                correlation_id: event.metadata.correlation_id,
                causation_id: event.metadata.causation_id,
                user: event.metadata.user,
                recorded_at: event.metadata.recorded_at,
            },
        }
    }
}

/// Ids in paths and audits: 1 to 256 characters, none of them control characters.
fn check_id(what: &str, id: &str) -> Result<(), Problem> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(Problem::bad_request(format!(
            "{what} must be 1 to 256 characters without control characters"
        )));
    }
    Ok(())
}

/// A stream's events as stored, oldest first.
#[utoipa::path(get, path = "/admin/streams/{aggregate_type}/{id}", tag = "operations",
    params(("aggregate_type" = String, Path, description = "The aggregate type, such as order."),
        ("id" = String, Path, description = "The aggregate's id.")),
    responses((status = 200, body = Vec<EventJson>)))]
pub(super) async fn stream<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Vec<EventJson>>, Problem> {
    let Path((aggregate_type, id)) =
        path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if !admin.aggregate_types.contains(&aggregate_type.as_str()) {
        return Err(Problem::not_found(format!(
            "no aggregate type {aggregate_type:?}; known types are {}",
            admin.aggregate_types.join(", ")
        )));
    }
    check_id("the id in the path", &id)?;
    let stream = StreamId::new(aggregate_type, id);
    let events = admin.store.read_stream(&stream, Version::NONE).await?;
    if events.is_empty() {
        return Err(Problem::not_found(format!("stream {stream} has no events")));
    }
    Ok(Json(events.into_iter().map(EventJson::from).collect()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// The request whose events to show.
    correlation_id: Option<String>,
    /// The stream whose events to show, as TYPE/ID.
    stream: Option<String>,
    /// The user (token subject) whose events to show.
    user: Option<String>,
    /// Only events recorded at or after this RFC 3339 instant.
    from: Option<String>,
    /// Only events recorded before this RFC 3339 instant.
    to: Option<String>,
    /// Events per page: 1 to 1000, default 100.
    limit: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AuditPage {
    events: Vec<EventJson>,
    next: Option<String>,
}

/// The events of one request (`correlation_id`), stream (`stream=TYPE/ID`) or user, newest
/// first, paged.
#[utoipa::path(get, path = "/audit", tag = "operations",
    params(AuditParams, crate::wait::WaitParams),
    responses((status = 200, body = AuditPage, headers(("X-View-Position" = u64, description = "The position the audit reflects.")))))]
pub(super) async fn audit<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    params: Result<Query<AuditParams>, QueryRejection>,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let subject = match (params.correlation_id, params.stream, params.user) {
        (Some(id), None, None) => {
            check_id("correlation_id", &id)?;
            AuditSubject::Correlation(id)
        }
        (None, Some(stream), None) => match stream.split_once('/') {
            Some((kind, id)) if !kind.is_empty() && !id.is_empty() && !id.contains('/') => {
                check_id("stream", &stream)?;
                AuditSubject::Stream(StreamId::new(kind, id))
            }
            _ => {
                return Err(Problem::bad_request(format!(
                    "stream must be TYPE/ID, such as order/o1; got {stream:?}"
                )));
            }
        },
        (None, None, Some(user)) => {
            check_id("user", &user)?;
            AuditSubject::User(user)
        }
        _ => {
            return Err(Problem::bad_request(
                "give exactly one of correlation_id, stream=TYPE/ID or user",
            ));
        }
    };
    let from = paging::instant("from", params.from.as_deref())?;
    let to = paging::instant("to", params.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(Problem::bad_request("from must not be after to"));
    }
    let limit = paging::limit(params.limit.as_deref())?;
    let before =
        match params.after.as_deref() {
            Some(cursor) => Some(Position(paging::key_of(cursor)?.parse().map_err(|_| {
                Problem::bad_request("after must be a cursor from a previous page")
            })?)),
            None => None,
        };
    let Some(projection) = admin.projections.get(strata::audit::NAME) else {
        return Err(Problem::not_found(
            "this service keeps no audit (it does not run the audit projection)",
        ));
    };
    let position = wait.until_ready(projection, admin.store.as_ref()).await?;
    // One more than asked tells whether there is a next page.
    let query = AuditQuery { subject, from, to, before, limit: limit + 1 };
    let mut events = strata::audit::audit(admin.store.as_ref(), admin.views.as_ref(), &query)
        .await
        .map_err(|error| Problem::unavailable(&error))?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next =
        more.then(|| events.last().map(|e| paging::cursor(&e.position.0.to_string()))).flatten();
    let page = AuditPage { events: events.into_iter().map(EventJson::from).collect(), next };
    let mut response = Json(page).into_response();
    response.headers_mut().insert(VIEW_POSITION_HEADER.clone(), position.0.into());
    Ok(response)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogParams {
    /// Only events after this position (default: the 20 before the head).
    after: Option<u64>,
    /// Events at most: 1 to 1000, default 100.
    limit: Option<String>,
}

/// Events of the whole log after a position, oldest first, and the head.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct LogPage {
    events: Vec<EventJson>,
    /// The store's last position when read; ask again with `after` = the last event's
    /// position for the next ones.
    head: u64,
}

/// The log after a position, oldest first: what the admin UI's live tail polls.
#[utoipa::path(get, path = "/admin/events", tag = "operations",
    params(LogParams), responses((status = 200, body = LogPage)))]
pub(super) async fn log<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<LogPage>, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = paging::limit(params.limit.as_deref())?;
    let head = admin.store.head();
    let after = params.after.map_or(Position(head.0.saturating_sub(20)), Position);
    let events = admin.store.read_all(after, limit).await?;
    Ok(Json(LogPage { events: events.into_iter().map(EventJson::from).collect(), head: head.0 }))
}

//! `/admin/projections…`: status, parked instances, retry, skip, skipped events, rebuild.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use strata::{
    EventStore, InstanceReport, ParkedInstance, ProjectionHandle, ProjectionStatus, SkippedEvent,
    ViewManager,
};

use super::Admin;
use crate::{JsonBody, Problem};

/// The projection named in the path, or 404 naming the ones there are.
fn projection<'a, S, M>(
    admin: &'a Admin<S, M>,
    name: &str,
) -> Result<&'a ProjectionHandle, Problem> {
    admin.projections.get(name).ok_or_else(|| {
        let known: Vec<&str> = admin.projections.iter().map(ProjectionHandle::name).collect();
        Problem::not_found(format!(
            "no projection {name:?}; known projections are {}",
            known.join(", ")
        ))
    })
}

pub(super) fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, Problem> {
    path.map(|Path(value)| value).map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

pub(super) async fn list<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<Json<Vec<ProjectionStatus>>, Problem> {
    Ok(Json(admin.projections.statuses().await?))
}

pub(super) async fn parked<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<ParkedInstance>>, Problem> {
    let name = path(name)?;
    Ok(Json(projection(&admin, &name)?.parked().await?))
}

pub(super) async fn retry<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    names: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<InstanceReport>, Problem> {
    let (name, view_id) = path(names)?;
    Ok(Json(projection(&admin, &name)?.retry(&view_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Skip {
    reason: String,
}

pub(super) async fn skip<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    names: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<Skip>,
) -> Result<Json<InstanceReport>, Problem> {
    let (name, view_id) = path(names)?;
    let handle = projection(&admin, &name)?;
    if body.reason.trim().is_empty() {
        return Err(Problem::unprocessable(
            "reason must not be empty: it is kept with the skipped event for good",
        ));
    }
    Ok(Json(handle.skip(&view_id, body.reason.trim()).await?))
}

pub(super) async fn skipped<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<SkippedEvent>>, Problem> {
    let name = path(name)?;
    Ok(Json(projection(&admin, &name)?.skipped().await?))
}

#[derive(Serialize)]
pub(super) struct Rebuilding {
    name: &'static str,
    status: &'static str,
}

pub(super) async fn rebuild<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Rebuilding>), Problem> {
    let name = path(name)?;
    let handle = projection(&admin, &name)?;
    handle.rebuild().await?;
    Ok((StatusCode::ACCEPTED, Json(Rebuilding { name: handle.name(), status: "rebuilding" })))
}

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

/// Every projection: position, head, lag in events and seconds, status, parked count and any
/// rebuild.
#[utoipa::path(get, path = "/admin/projections", tag = "operations",
    responses((status = 200, body = Vec<ProjectionStatus>)))]
pub(super) async fn list<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<Json<Vec<ProjectionStatus>>, Problem> {
    Ok(Json(admin.projections.statuses().await?))
}

/// The projection's parked instances, oldest first, with the error that parked each.
#[utoipa::path(get, path = "/admin/projections/{name}/parked", tag = "operations",
    params(("name" = String, Path, description = "The projection.")), responses((status = 200, body = Vec<ParkedInstance>)))]
pub(super) async fn parked<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<ParkedInstance>>, Problem> {
    let name = path(name)?;
    Ok(Json(projection(&admin, &name)?.parked().await?))
}

/// Applies the parked instance's waiting events again; it is released, or parked again at the
/// event that still fails.
#[utoipa::path(post, path = "/admin/projections/{name}/parked/{view_id}/retry", tag = "operations",
    params(("name" = String, Path, description = "The projection."), ("view_id" = String, Path, description = "The parked instance.")), responses((status = 200, body = InstanceReport)))]
pub(super) async fn retry<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    names: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<InstanceReport>, Problem> {
    let (name, view_id) = path(names)?;
    Ok(Json(projection(&admin, &name)?.retry(&view_id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Skip {
    /// Why, kept with the skipped event for good; must not be empty.
    reason: String,
}

/// Drops the instance's first waiting event for good (kept with the reason) and applies the
/// rest.
#[utoipa::path(post, path = "/admin/projections/{name}/parked/{view_id}/skip", tag = "operations",
    params(("name" = String, Path, description = "The projection."), ("view_id" = String, Path, description = "The parked instance.")), request_body = Skip, responses((status = 200, body = InstanceReport)))]
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

/// Every event skipped for good in this projection.
#[utoipa::path(get, path = "/admin/projections/{name}/skipped", tag = "operations",
    params(("name" = String, Path, description = "The projection.")), responses((status = 200, body = Vec<SkippedEvent>)))]
pub(super) async fn skipped<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<SkippedEvent>>, Problem> {
    let name = path(name)?;
    Ok(Json(projection(&admin, &name)?.skipped().await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Rebuilding {
    name: &'static str,
    /// Always `rebuilding`.
    status: &'static str,
}

/// Begins a rebuild beside the live views, which keep serving until it catches up.
#[utoipa::path(post, path = "/admin/projections/{name}/rebuild", tag = "operations",
    params(("name" = String, Path, description = "The projection.")), responses((status = 202, body = Rebuilding)))]
pub(super) async fn rebuild<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Rebuilding>), Problem> {
    let name = path(name)?;
    let handle = projection(&admin, &name)?;
    handle.rebuild().await?;
    Ok((StatusCode::ACCEPTED, Json(Rebuilding { name: handle.name(), status: "rebuilding" })))
}

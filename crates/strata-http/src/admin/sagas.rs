//! `/admin/sagas…`: how many instances of each saga are in each state, and one instance.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use strata::saga::SagaCounts;
use strata::{EventStore, ViewManager};

use super::Admin;
use crate::Problem;

/// Every saga's instances by state.
#[utoipa::path(get, path = "/admin/sagas", tag = "operations",
    responses((status = 200, body = Vec<SagaCounts>)))]
pub(super) async fn list<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
) -> Result<Json<Vec<SagaCounts>>, Problem> {
    Ok(Json(admin.sagas.counts().await?))
}

/// One saga instance: its state, next deadline and history (the saga defines the shape).
#[utoipa::path(get, path = "/admin/sagas/{name}/{id}", tag = "operations",
    params(("name" = String, Path, description = "The saga."), ("id" = String, Path, description = "The instance.")),
    responses((status = 200, body = Object)))]
pub(super) async fn instance<S: EventStore, M: ViewManager>(
    State(admin): State<Admin<S, M>>,
    names: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let (name, id) = super::projections::path(names)?;
    let Some(saga) = admin.sagas.get(&name) else {
        return Err(Problem::not_found(format!("no saga {name:?}")));
    };
    match saga.instance(&id).await? {
        Some(instance) => Ok(Json(instance)),
        None => Err(Problem::not_found(format!("saga {name} has no instance {id:?}"))),
    }
}

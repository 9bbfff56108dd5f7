//! View queries by id. Each answer carries `X-View-Position`, and each may wait for its
//! view to reach `?min_position=N` (read-your-writes). A parked instance is never served as
//! if it were current: its answer is a 503 that says so.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::{Position, ProjectionHandle, StoredView, ViewManager};
use strata_http::{Problem, VIEW_POSITION_HEADER, ViewWait};

use super::ids::PathId;
use crate::app::{App, Backend};
use crate::views::{CustomerView, OrderView, ProductView};

/// The running projection `name`; a missing one is a bug in the service's wiring.
pub(super) fn projection<'a, B: Backend>(
    app: &'a App<B>,
    name: &str,
) -> Result<&'a ProjectionHandle, Problem> {
    app.projection(name).ok_or_else(|| {
        Problem::internal(&std::io::Error::other(format!(
            "projection {name} is not running on this node"
        )))
    })
}

/// The current state of `stored`, or the 503 of a parked instance.
pub(super) fn current<V>(
    projection: &str,
    what: &str,
    id: &str,
    stored: StoredView<V>,
) -> Result<V, Problem> {
    match stored.parked {
        None => Ok(stored.view),
        Some(parking) => Err(Problem::view_parked(format!(
            "{what} {id:?} is parked at position {}: an event could not be applied to it ({}); \
             see GET /admin/projections/{projection}/parked",
            parking.position, parking.error
        ))),
    }
}

/// Waits as asked, then reads view `id` of projection `name`; 404 when it does not exist.
async fn read_view<B: Backend, V: DeserializeOwned + Send + 'static>(
    app: &App<B>,
    name: &str,
    id: &str,
    wait: ViewWait,
    what: &str,
) -> Result<(V, Position), Problem> {
    let handle = projection(app, name)?;
    let position = wait.until_ready(handle, app.events().as_ref()).await?;
    match app.views.get::<V>(name, id).await? {
        Some(stored) => Ok((current(name, what, id, stored)?, position)),
        None => Err(Problem::not_found(format!("{what} {id:?} does not exist"))),
    }
}

/// A JSON answer with the position its view reflects.
pub(super) fn answer<V: Serialize>(view: V, position: Position) -> Response {
    let mut response = Json(view).into_response();
    response.headers_mut().insert(VIEW_POSITION_HEADER.clone(), HeaderValue::from(position.0));
    response
}

/// A customer.
#[utoipa::path(get, path = "/customers/{id}", tag = "queries", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The customer id."), strata_http::WaitParams),
    responses((status = 200, body = CustomerView, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn customer<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let (view, position) =
        read_view::<B, CustomerView>(&app, "customers", &id, wait, "customer").await?;
    Ok(answer(view, position))
}

/// A product with its stock: on hand, reserved for orders, available.
#[utoipa::path(get, path = "/products/{sku}", tag = "queries", params(("sku" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The product's sku."), strata_http::WaitParams),
    responses((status = 200, body = ProductView, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn product<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(sku): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let (view, position) =
        read_view::<B, ProductView>(&app, "products", &sku, wait, "product").await?;
    Ok(answer(view, position))
}

/// An order; its ETag is its version.
#[utoipa::path(get, path = "/orders/{id}", tag = "queries", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."), strata_http::WaitParams),
    responses((status = 200, body = OrderView, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let (view, position) = read_view::<B, OrderView>(&app, "orders", &id, wait, "order").await?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version));
    let mut response = answer(view, position);
    if let Ok(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

//! View queries. Each answer carries `X-View-Position`, and each may wait for its view to
//! reach `?min_position=N` (read-your-writes).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::{Position, ProjectionHandle, ViewManager};
use strata_http::{Problem, VIEW_POSITION_HEADER, ViewWait};

use super::ids::PathId;
use crate::app::{App, Backend};
use crate::views::{CustomerOrdersView, CustomerView, OrderView, ProductView};

/// Waits as asked, then reads view `id` of `projection`; 404 when it does not exist.
async fn read_view<B: Backend, V: DeserializeOwned + Send + 'static>(
    app: &App<B>,
    projection: &ProjectionHandle,
    id: &str,
    wait: ViewWait,
    what: &str,
) -> Result<(V, Position), Problem> {
    let position = wait.until_ready(projection).await?;
    match app.views.get::<V>(projection.name(), id).await? {
        Some(stored) => Ok((stored.view, position)),
        None => Err(Problem::not_found(format!("{what} {id:?} does not exist"))),
    }
}

fn answer<V: Serialize>(view: V, position: Position) -> Response {
    let mut response = Json(view).into_response();
    response.headers_mut().insert(VIEW_POSITION_HEADER.clone(), HeaderValue::from(position.0));
    response
}

pub async fn customer<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let projection = &app.projections.customers;
    let (view, position) =
        read_view::<B, CustomerView>(&app, projection, &id, wait, "customer").await?;
    Ok(answer(view, position))
}

pub async fn customer_orders<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let projection = &app.projections.customer_orders;
    let (view, position) =
        read_view::<B, CustomerOrdersView>(&app, projection, &id, wait, "customer").await?;
    Ok(answer(view, position))
}

pub async fn product<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(sku): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let projection = &app.projections.products;
    let (view, position) =
        read_view::<B, ProductView>(&app, projection, &sku, wait, "product").await?;
    Ok(answer(view, position))
}

pub async fn order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let projection = &app.projections.orders;
    let (view, position) = read_view::<B, OrderView>(&app, projection, &id, wait, "order").await?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version));
    let mut response = answer(view, position);
    if let Ok(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

//! The service's HTTP API: command routes (`POST`), view queries (`GET`), admin and health.
//! Handlers only check the shape of what arrives and call [`crate::app::App`]; every error
//! becomes problem+json through `strata-http`.

mod commands;
mod ids;
mod lists;
mod queries;
mod reports;
mod search;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use strata_http::admin::{self, Admin};
use strata_http::openapi::{self, route};
use strata_http::server::ReadTimeout;
use strata_http::{
    EveryRequest, IdempotencyLayer, MAX_BODY_BYTES, Problem, Required, Role, guarded,
};
use utoipa_axum::router::OpenApiRouter;

use crate::app::{AGGREGATE_TYPES, App, AppError, Backend};

/// The whole API over a running service.
pub fn router<B: Backend>(app: Arc<App<B>>) -> Router {
    let around = EveryRequest {
        metrics: app.http_metrics.clone(),
        shutdown: app.shutdown.clone(),
        read_timeout: ReadTimeout(app.read_timeout),
    };
    let commands = OpenApiRouter::new()
        .routes(route::<commands::__path_register_customer, _, _, _>(
            commands::register_customer::<B>,
        ))
        .routes(route::<commands::__path_create_product, _, _, _>(commands::create_product::<B>))
        .routes(route::<commands::__path_restock_product, _, _, _>(commands::restock_product::<B>))
        .routes(route::<commands::__path_place_order, _, _, _>(commands::place_order::<B>))
        .routes(route::<commands::__path_add_line, _, _, _>(commands::add_line::<B>))
        .routes(route::<commands::__path_confirm_order, _, _, _>(commands::confirm_order::<B>))
        .routes(route::<commands::__path_ship_order, _, _, _>(commands::ship_order::<B>))
        .routes(route::<commands::__path_cancel_order, _, _, _>(commands::cancel_order::<B>))
        .route_layer(IdempotencyLayer::new(app.events().clone()));
    // Outermost: an unauthenticated request never reaches the idempotency records.
    let commands = guarded(commands, Required { tokens: app.tokens.clone(), role: Role::Write });
    // A replica answers every command route with 405, whoever asks.
    let commands = if app.read_only {
        commands.route_layer(axum::middleware::from_fn(strata_http::read_only))
    } else {
        commands
    };
    let queries = OpenApiRouter::new()
        .routes(route::<queries::__path_customer, _, _, _>(queries::customer::<B>))
        .routes(route::<lists::__path_customer_orders, _, _, _>(lists::customer_orders::<B>))
        .routes(route::<queries::__path_product, _, _, _>(queries::product::<B>))
        .routes(route::<lists::__path_orders, _, _, _>(lists::orders::<B>))
        .routes(route::<queries::__path_order, _, _, _>(queries::order::<B>))
        .routes(route::<reports::__path_sales, _, _, _>(reports::sales::<B>))
        .routes(route::<search::__path_orders, _, _, _>(search::orders::<B>));
    let queries = guarded(queries, Required { tokens: app.tokens.clone(), role: Role::Read });
    let operations = admin::routes(Admin {
        store: app.events().clone(),
        views: app.views.clone(),
        projections: app.projections.clone(),
        sagas: app.sagas.clone(),
        node_id: app.node_id.clone(),
        aggregate_types: AGGREGATE_TYPES.to_vec(),
        http: around.metrics.clone(),
        commands: app.bus.counts().clone(),
        tokens: app.tokens.clone(),
    });
    let read_only = app.read_only;
    let api = commands.merge(queries).with_state(app).merge(operations);
    // A replica's queries wait for positions its copy has not reached yet.
    let api = if read_only { api.layer(axum::Extension(strata_http::Replica)) } else { api };
    openapi::serve_document(api, "Strata orders", env!("CARGO_PKG_VERSION"))
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(around)
}

impl From<AppError> for Problem {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Customer(e) => e.into(),
            AppError::Product(e) => e.into(),
            AppError::Order(e) => e.into(),
            AppError::UnknownCustomer(_) | AppError::UnknownProduct(_) => {
                Problem::unprocessable(error.to_string())
            }
        }
    }
}

//! Command routes: deserialize and check the shape of the body, then hand it to the app.
//! Bodies refuse unknown fields, so a misspelt optional field is an error, not ignored.

use std::sync::Arc;

use axum::Json;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use strata::{CommandContext, CommandOutcome};
use strata_http::idempotency::mark_replayed;
use strata_http::{CorrelationId, Idempotency, IfMatch, JsonBody, Problem, User};

use super::ids::{self, PathId};
use crate::app::{App, Backend, LineRequest, PlaceOrder};
use crate::domain::{OrderCommand, OrderStatus};

/// The answer to every successful command.
#[derive(Serialize, utoipa::ToSchema)]
struct Accepted {
    /// The aggregate's id.
    id: String,
    /// The position of the command's last event: pass it as `min_position` to read it.
    position: u64,
}

fn accepted(status: StatusCode, outcome: CommandOutcome) -> Response {
    let position = outcome.position.map_or(0, |p| p.0);
    let mut response =
        (status, Json(Accepted { id: outcome.stream.id.clone(), position })).into_response();
    mark_replayed(&mut response, &outcome);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", outcome.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// What every command takes from its request's headers: the correlation id, `If-Match`,
/// the idempotency claim, and the token's subject as the user of every event it causes.
pub struct Context(CommandContext);

/// The headers every command takes, as the API describes them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `Context`; this type only describes them
pub struct CommandHeaders {
    /// Makes a retry safe: the same key and request answer as the first did, without acting
    /// again (`Idempotency-Replayed: true`).
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
    /// The aggregate version the client decided on (an ETag, like "3"): 412 when it moved.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let correlation = CorrelationId::from_request_parts(parts, state).await?;
        let if_match = IfMatch::from_request_parts(parts, state).await?;
        let key = Idempotency::from_request_parts(parts, state).await?;
        let Ok(user) = User::from_request_parts(parts, state).await;
        let mut context = CommandContext::new(correlation.0);
        context.user = user.0;
        context.expected_version = if_match.0;
        context.idempotency = key.0;
        Ok(Context(context))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    customer_id: Option<String>,
    name: String,
    email: String,
}

/// Registers a customer.
#[utoipa::path(post, path = "/customers", tag = "commands", params(CommandHeaders),
    request_body = RegisterCustomer,
    responses((status = 201, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn register_customer<B: Backend>(
    State(app): State<Arc<App<B>>>,
    Context(ctx): Context,
    JsonBody(body): JsonBody<RegisterCustomer>,
) -> Result<Response, Problem> {
    let id = ids::given_or_new("customer_id", body.customer_id)?;
    let outcome = app.register_customer(&id, body.name, body.email, &ctx).await?;
    Ok(accepted(StatusCode::CREATED, outcome))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    sku: String,
    name: String,
    price_cents: i64,
}

/// Creates a product.
#[utoipa::path(post, path = "/products", tag = "commands", params(CommandHeaders),
    request_body = CreateProduct,
    responses((status = 201, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn create_product<B: Backend>(
    State(app): State<Arc<App<B>>>,
    Context(ctx): Context,
    JsonBody(body): JsonBody<CreateProduct>,
) -> Result<Response, Problem> {
    ids::check("sku", &body.sku)?;
    let outcome = app.create_product(&body.sku, body.name, body.price_cents, &ctx).await?;
    Ok(accepted(StatusCode::CREATED, outcome))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    qty: i64,
}

/// Adds units to a product's stock.
#[utoipa::path(post, path = "/products/{sku}/restock", tag = "commands", params(("sku" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The product's sku."), CommandHeaders),
    request_body = Restock,
    responses((status = 200, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn restock_product<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(sku): PathId,
    Context(ctx): Context,
    JsonBody(body): JsonBody<Restock>,
) -> Result<Response, Problem> {
    let outcome = app.restock_product(&sku, body.qty, &ctx).await?;
    Ok(accepted(StatusCode::OK, outcome))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    sku: String,
    qty: i64,
}

impl Line {
    fn checked(self, field: &str) -> Result<LineRequest, Problem> {
        ids::check(field, &self.sku)?;
        Ok(LineRequest { sku: self.sku, qty: self.qty })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    order_id: Option<String>,
    customer_id: String,
    lines: Vec<Line>,
    payment_method: Option<String>,
    shipping_address: Option<String>,
}

/// Places an order for a registered customer.
#[utoipa::path(post, path = "/orders", tag = "commands", params(CommandHeaders),
    request_body = PlaceOrderBody,
    responses((status = 201, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn place_order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    Context(ctx): Context,
    JsonBody(body): JsonBody<PlaceOrderBody>,
) -> Result<Response, Problem> {
    let id = ids::given_or_new("order_id", body.order_id)?;
    ids::check("customer_id", &body.customer_id)?;
    let lines = body
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| line.checked(&format!("lines[{i}].sku")))
        .collect::<Result<Vec<_>, _>>()?;
    let request = PlaceOrder {
        customer_id: body.customer_id,
        lines,
        payment_method: body.payment_method,
        shipping_address: body.shipping_address,
    };
    let outcome = app.place_order(&id, request, &ctx).await?;
    Ok(accepted(StatusCode::CREATED, outcome))
}

/// Adds a line to a placed order, priced now.
#[utoipa::path(post, path = "/orders/{id}/lines", tag = "commands", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."), CommandHeaders),
    request_body = Line,
    responses((status = 200, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn add_line<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    Context(ctx): Context,
    JsonBody(body): JsonBody<Line>,
) -> Result<Response, Problem> {
    let line = body.checked("sku")?;
    let outcome = app.add_line(&id, line, &ctx).await?;
    Ok(accepted(StatusCode::OK, outcome))
}

/// The body of confirm and ship: a JSON object with no fields.
pub type Empty = serde_json::Map<String, serde_json::Value>;

fn check_empty(body: &Empty) -> Result<(), Problem> {
    match body.keys().next() {
        None => Ok(()),
        Some(field) => {
            Err(Problem::bad_request(format!("unknown field `{field}`: this command takes {{}}")))
        }
    }
}

const DEFAULT_CONFIRM_WAIT_MS: u64 = 2_000;
const MAX_CONFIRM_WAIT_MS: u64 = 30_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfirmWait {
    /// How long to wait for the decision, in milliseconds: default 2000, at most 30000.
    #[param(maximum = 30000)]
    wait_ms: Option<u64>,
}

/// What confirming answers: where the order ended up, and the position of the event that
/// decided it (or of the request, while still confirming).
#[derive(Serialize, utoipa::ToSchema)]
struct Confirmation {
    id: String,
    position: u64,
    status: OrderStatus,
}

/// Asks to confirm, and waits for the fulfilment saga's outcome: 200 with `confirmed` or
/// `cancelled`, or 202 with `confirming` when it takes longer than `wait_ms`.
#[utoipa::path(post, path = "/orders/{id}/confirm", tag = "commands", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."), ConfirmWait, CommandHeaders),
    request_body = Object,
    responses((status = 200, description = "Decided: confirmed, or cancelled when stock ran short.", body = Confirmation, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 202, description = "Still confirming after wait_ms.", body = Confirmation, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the order's.", body = Problem, content_type = "application/problem+json")))]
pub async fn confirm_order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    wait: Result<Query<ConfirmWait>, QueryRejection>,
    Context(ctx): Context,
    JsonBody(body): JsonBody<Empty>,
) -> Result<Response, Problem> {
    let Query(wait) =
        wait.map_err(|_| Problem::bad_request("wait_ms must be a non-negative integer"))?;
    let wait_ms = wait.wait_ms.unwrap_or(DEFAULT_CONFIRM_WAIT_MS);
    if wait_ms > MAX_CONFIRM_WAIT_MS {
        return Err(Problem::bad_request(format!(
            "wait_ms must be at most {MAX_CONFIRM_WAIT_MS}; got {wait_ms}"
        )));
    }
    check_empty(&body)?;
    let wait = Duration::from_millis(wait_ms);
    let (asked, decided) = app.confirm_order(&id, &ctx, wait).await?;
    let (status, position, version, answer) = match decided {
        Some(decided) => (StatusCode::OK, decided.position.0, decided.version.0, decided.status),
        None => (
            StatusCode::ACCEPTED,
            asked.position.map_or(0, |p| p.0),
            asked.version.0,
            OrderStatus::Confirming,
        ),
    };
    let body = Confirmation { id: asked.stream.id.clone(), position, status: answer };
    let mut response = (status, Json(body)).into_response();
    mark_replayed(&mut response, &asked);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Ships a confirmed order. The body is `{}`.
#[utoipa::path(post, path = "/orders/{id}/ship", tag = "commands", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."), CommandHeaders),
    request_body = Object,
    responses((status = 200, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn ship_order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    Context(ctx): Context,
    JsonBody(body): JsonBody<Empty>,
) -> Result<Response, Problem> {
    check_empty(&body)?;
    let outcome = app.change_order(&id, OrderCommand::Ship, &ctx).await?;
    Ok(accepted(StatusCode::OK, outcome))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    reason: String,
}

/// Cancels an order that has not shipped.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "commands", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."), CommandHeaders),
    request_body = Cancel,
    responses((status = 200, body = Accepted, headers(("ETag" = String, description = "The aggregate's version after the command; send it as If-Match."))),
        (status = 412, description = "If-Match names another version than the aggregate's.", body = Problem, content_type = "application/problem+json")))]
pub async fn cancel_order<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(id): PathId,
    Context(ctx): Context,
    JsonBody(body): JsonBody<Cancel>,
) -> Result<Response, Problem> {
    let outcome = app.change_order(&id, OrderCommand::Cancel { reason: body.reason }, &ctx).await?;
    Ok(accepted(StatusCode::OK, outcome))
}

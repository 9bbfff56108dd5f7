//! Lists of orders: `GET /orders` (filtered by customer, status and time) and
//! `GET /customers/{id}/orders`, newest first, paged by key (never by offset), from one
//! indexed query on the `customer_orders` table.
//!
//! The cursor is the last order's `(placed_at, order_id)`; the next page holds only orders
//! strictly older than it, so orders placed while a client pages never repeat or shift a
//! page, and every order that existed when paging began is returned exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::table::{Comparison, Filter, TableQuery, Value};
use strata::{Position, ViewManager};
use strata_http::{Problem, ViewWait, paging};

use super::ids::{self, PathId};
use super::queries::{answer, current, projection};
use crate::app::{App, Backend};
use crate::domain::OrderStatus;
use crate::views::{CUSTOMER_ORDERS, CustomerView};

const LIST: &str = "customer_orders";

/// The query string of a list; `min_position` and `wait_ms` are read by [`ViewWait`].
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this customer's orders (not taken by `/customers/{id}/orders`).
    customer_id: Option<String>,
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// Only orders placed at or after this RFC 3339 instant.
    placed_from: Option<String>,
    /// Only orders placed before this RFC 3339 instant.
    placed_to: Option<String>,
    /// Orders per page: 1 to 1000, default 100.
    limit: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// A page of orders.
#[derive(Serialize, utoipa::ToSchema)]
struct Page {
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<String>,
    /// Newest first; a parked order carries `parked_at_position`.
    #[schema(value_type = Vec<crate::views::OrderView>)]
    orders: Vec<serde_json::Value>,
    /// The cursor of the next page, if there is one.
    next: Option<String>,
}

fn status(raw: &str) -> Result<OrderStatus, Problem> {
    [
        OrderStatus::Placed,
        OrderStatus::Confirming,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ]
    .into_iter()
    .find(|status| status.to_string() == raw)
    .ok_or_else(|| {
        Problem::bad_request(format!(
            "status must be placed, confirming, confirmed, shipped or cancelled; got {raw:?}"
        ))
    })
}

/// The `(placed_at, order_id)` a cursor holds.
fn after(cursor: &str) -> Result<Vec<Value>, Problem> {
    let key = paging::key_of(cursor)?;
    let invalid = || Problem::bad_request("after must be a cursor from a previous page of orders");
    let (micros, id) = key.split_once(':').ok_or_else(invalid)?;
    ids::check("the order id in after", id).map_err(|_| invalid())?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .ok_or_else(invalid)?;
    Ok(vec![Value::timestamp(at), Value::Text(id.to_owned())])
}

fn cursor_of(row: &[Value]) -> Option<String> {
    match (&row[3], &row[0]) {
        (Value::Timestamp(at), Value::Text(id)) => {
            Some(paging::cursor(&format!("{}:{id}", at.timestamp_micros())))
        }
        _ => None,
    }
}

/// Builds the table query of a list from its parameters.
fn list_query(
    customer: Option<String>,
    params: &ListParams,
) -> Result<(TableQuery, usize), Problem> {
    let mut filters = Vec::new();
    if let Some(customer) = customer {
        ids::check("customer_id", &customer)?;
        filters.push(Filter {
            column: "customer_id",
            comparison: Comparison::Eq,
            value: Value::Text(customer),
        });
    }
    if let Some(raw) = &params.status {
        filters.push(Filter {
            column: "status",
            comparison: Comparison::Eq,
            value: Value::Text(status(raw)?.to_string()),
        });
    }
    let from = paging::instant("placed_from", params.placed_from.as_deref())?;
    let to = paging::instant("placed_to", params.placed_to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(Problem::bad_request("placed_from must not be after placed_to"));
    }
    if let Some(from) = from {
        filters.push(Filter {
            column: "placed_at",
            comparison: Comparison::Ge,
            value: Value::timestamp(from),
        });
    }
    if let Some(to) = to {
        filters.push(Filter {
            column: "placed_at",
            comparison: Comparison::Lt,
            value: Value::timestamp(to),
        });
    }
    let limit = paging::limit(params.limit.as_deref())?;
    let after = params.after.as_deref().map(after).transpose()?;
    // One more than asked tells whether there is a next page.
    let query = TableQuery {
        filters,
        order_by: vec!["placed_at", "order_id"],
        descending: true,
        after,
        limit: Some(limit + 1),
    };
    Ok((query, limit))
}

/// Runs a list query and shapes the page; parked orders carry where they are parked.
async fn page<B: Backend>(
    app: &App<B>,
    query: TableQuery,
    limit: usize,
) -> Result<(Vec<serde_json::Value>, Option<String>), Problem> {
    let mut rows = app.views.select(&CUSTOMER_ORDERS, &query).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().and_then(|row| cursor_of(row)) } else { None };
    let parked: HashMap<String, Position> = if rows.is_empty() {
        HashMap::new()
    } else {
        app.views
            .parked(LIST, strata::Slot::Live)
            .await?
            .into_iter()
            .map(|p| (p.view_id, p.position))
            .collect()
    };
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(id), Some(data)) = (row[0].as_text(), row[5].as_text()) else { continue };
        let mut order: serde_json::Value =
            serde_json::from_str(data).map_err(|error| Problem::internal(&error))?;
        if let (Some(position), Some(fields)) = (parked.get(id), order.as_object_mut()) {
            // Stale until an operator acts: said so rather than served as current.
            fields.insert("parked_at_position".to_owned(), serde_json::json!(position.0));
        }
        orders.push(order);
    }
    Ok((orders, next))
}

fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    params
        .map(|Query(params)| params)
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

/// Orders, newest first, paged by cursor.
#[utoipa::path(get, path = "/orders", tag = "queries", params(ListParams, strata_http::WaitParams),
    responses((status = 200, body = Page, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn orders<B: Backend>(
    State(app): State<Arc<App<B>>>,
    params: Result<Query<ListParams>, QueryRejection>,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let params = query(params)?;
    let (query, limit) = list_query(params.customer_id.clone(), &params)?;
    let position = wait.until_ready(projection(&app, LIST)?, app.events().as_ref()).await?;
    let (orders, next) = page(&app, query, limit).await?;
    Ok(answer(Page { customer_id: None, orders, next }, position))
}

/// A customer's orders, newest first, paged by cursor.
#[utoipa::path(get, path = "/customers/{id}/orders", tag = "queries", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The customer id."), ListParams, strata_http::WaitParams),
    responses((status = 200, body = Page, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn customer_orders<B: Backend>(
    State(app): State<Arc<App<B>>>,
    PathId(customer): PathId,
    params: Result<Query<ListParams>, QueryRejection>,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let params = query(params)?;
    if params.customer_id.is_some() {
        return Err(Problem::bad_request(
            "the customer is in the path; customer_id is not taken here",
        ));
    }
    let (query, limit) = list_query(Some(customer.clone()), &params)?;
    // Both at once: a projection is hurried only while a query waits on it.
    let (customers, listed) = tokio::try_join!(
        wait.until_ready(projection(&app, "customers")?, app.events().as_ref()),
        wait.until_ready(projection(&app, LIST)?, app.events().as_ref()),
    )?;
    match app.views.get::<CustomerView>("customers", &customer).await? {
        Some(stored) => drop(current("customers", "customer", &customer, stored)?),
        None => return Err(Problem::not_found(format!("customer {customer:?} does not exist"))),
    }
    let (orders, next) = page(&app, query, limit).await?;
    Ok(answer(Page { customer_id: Some(customer), orders, next }, customers.min(listed)))
}

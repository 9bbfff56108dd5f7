//! `GET /reports/sales?from=YYYY-MM-DD&to=YYYY-MM-DD[&sku=…]`: sales per day and product,
//! rows by day then sku, read with SQL from the `sales_daily` table (never by replaying
//! events). `from` and `to` are inclusive days. Totals sum the rows' units and revenue;
//! their `orders` counts orders, each once (from `sales_daily_orders`; with `sku`, the
//! orders with a line of that sku).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use strata::ViewManager;
use strata::table::{Comparison, Filter, TableQuery, Value};
use strata_http::{Problem, ViewWait};

use super::ids;
use super::queries::{answer, projection};
use crate::app::{App, Backend};
use crate::views::{SALES_DAILY, SALES_DAILY_ORDERS};

const SALES: &str = "sales_daily";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// The first day, as YYYY-MM-DD (required).
    from: Option<String>,
    /// The last day, inclusive, as YYYY-MM-DD (required).
    to: Option<String>,
    /// Only this product.
    sku: Option<String>,
}

#[derive(Serialize, Default, PartialEq, Eq, Debug, utoipa::ToSchema)]
struct Totals {
    orders: i64,
    units: i64,
    revenue_cents: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Row {
    day: NaiveDate,
    sku: String,
    orders: i64,
    units: i64,
    revenue_cents: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Report {
    from: NaiveDate,
    to: NaiveDate,
    rows: Vec<Row>,
    totals: Totals,
    /// Orders whose instance is parked: their contribution is the one before the event
    /// that could not be applied, and may be stale.
    parked: u64,
}

fn day(name: &str, raw: Option<&str>) -> Result<NaiveDate, Problem> {
    let raw =
        raw.ok_or_else(|| Problem::bad_request(format!("{name} is required, as YYYY-MM-DD")))?;
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
        Problem::bad_request(format!("{name} must be a day as YYYY-MM-DD; got {raw:?}"))
    })
}

/// Sales per day and product between two days, with totals.
#[utoipa::path(get, path = "/reports/sales", tag = "queries", params(ReportParams, strata_http::WaitParams),
    responses((status = 200, body = Report, headers(("X-View-Position" = u64, description = "The position the view reflects.")))))]
pub async fn sales<B: Backend>(
    State(app): State<Arc<App<B>>>,
    params: Result<Query<ReportParams>, QueryRejection>,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let (from, to) = (day("from", params.from.as_deref())?, day("to", params.to.as_deref())?);
    if from > to {
        return Err(Problem::bad_request(format!("from ({from}) must not be after to ({to})")));
    }
    let days = vec![
        Filter { column: "day", comparison: Comparison::Ge, value: Value::Date(from) },
        Filter { column: "day", comparison: Comparison::Le, value: Value::Date(to) },
    ];
    let mut filters = days.clone();
    let by_sku = params.sku.is_some();
    if let Some(sku) = params.sku {
        ids::check("sku", &sku)?;
        filters.push(Filter { column: "sku", comparison: Comparison::Eq, value: Value::Text(sku) });
    }
    let handle = projection(&app, SALES)?;
    let position = wait.until_ready(handle, app.events().as_ref()).await?;
    let query = TableQuery { filters, order_by: vec!["day", "sku"], ..TableQuery::default() };
    let mut rows = Vec::new();
    let mut totals = Totals::default();
    for row in app.views.select(&SALES_DAILY, &query).await? {
        let (Value::Date(day), Value::Text(sku)) = (&row[0], &row[1]) else { continue };
        let number = |i: usize| row[i].as_integer().unwrap_or(0);
        let row = Row {
            day: *day,
            sku: sku.clone(),
            orders: number(2),
            units: number(3),
            revenue_cents: number(4),
        };
        if by_sku {
            totals.orders += row.orders;
        }
        totals.units += row.units;
        totals.revenue_cents += row.revenue_cents;
        rows.push(row);
    }
    if !by_sku {
        let per_day = TableQuery { filters: days, order_by: vec!["day"], ..TableQuery::default() };
        for row in app.views.select(&SALES_DAILY_ORDERS, &per_day).await? {
            totals.orders += row[1].as_integer().unwrap_or(0);
        }
    }
    let parked = app.views.record(SALES).await?.parked;
    Ok(answer(Report { from, to, rows, totals, parked }, position))
}

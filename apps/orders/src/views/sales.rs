//! The reporting read model: sales per day and product in the `sales_daily` table, summed
//! in SQL by `GET /reports/sales`.
//!
//! Each order is an instance that contributes, while it is confirmed or shipped, one row per
//! sku to the day it was confirmed: one order, its units, and its revenue (qty × price).
//! The table adds up the contributions of every order; a cancellation takes the order's
//! contribution out again. `sales_daily_orders` counts each order once per day, for the
//! report's total.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use strata::table::{Column, ColumnType, TableKind, TableRows, TableSpec, Value};
use strata::{ApplyError, Envelope, Projection, View};

use super::{Locator, OrdersProjection, line_total, locate_order, order_stream};
use crate::domain::{OrderEvent, OrderLine, OrderStatus, OrdersEvent};

/// Sales per day and sku.
pub static SALES_DAILY: TableSpec = TableSpec {
    name: "sales_daily",
    columns: &[
        Column::new("day", ColumnType::Date),
        Column::new("sku", ColumnType::Text),
        Column::new("orders", ColumnType::Integer),
        Column::new("units", ColumnType::Integer),
        Column::new("revenue_cents", ColumnType::Integer),
    ],
    key_columns: 2,
    indexes: &[],
    kind: TableKind::Sums,
};

/// Orders confirmed per day, whatever they hold: the report's total of orders, which the
/// per-sku rows cannot give (an order with two skus is in two rows).
pub static SALES_DAILY_ORDERS: TableSpec = TableSpec {
    name: "sales_daily_orders",
    columns: &[Column::new("day", ColumnType::Date), Column::new("orders", ColumnType::Integer)],
    key_columns: 1,
    indexes: &[],
    kind: TableKind::Sums,
};

/// The tables of the projection.
static TABLES: [&TableSpec; 2] = [&SALES_DAILY, &SALES_DAILY_ORDERS];

/// What one order contributes to the sales report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSales {
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Its status, once placed.
    pub status: Option<OrderStatus>,
    /// The day (UTC) it was confirmed.
    pub confirmed_on: Option<NaiveDate>,
}

impl View<OrdersEvent> for OrderSales {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) -> Result<(), ApplyError> {
        let OrdersEvent::Order(order_event) = &event.event else { return Ok(()) };
        match order_event {
            OrderEvent::OrderPlaced(placed) => {
                self.lines = placed.lines.clone();
                self.status = Some(OrderStatus::Placed);
            }
            OrderEvent::LineAdded(added) => self.lines.push(added.line.clone()),
            OrderEvent::OrderConfirmationRequested(_) => {
                self.status = Some(OrderStatus::Confirming);
            }
            OrderEvent::LineUnavailable(_) => {}
            OrderEvent::OrderConfirmed(_) => {
                self.status = Some(OrderStatus::Confirmed);
                self.confirmed_on = Some(event.metadata.recorded_at.date_naive());
            }
            OrderEvent::OrderShipped(_) => self.status = Some(OrderStatus::Shipped),
            OrderEvent::OrderCancelled(_) => self.status = Some(OrderStatus::Cancelled),
        }
        Ok(())
    }

    fn rows(&self, _id: &str, rows: &mut TableRows) {
        let counted = matches!(self.status, Some(OrderStatus::Confirmed | OrderStatus::Shipped));
        let Some(day) = self.confirmed_on.filter(|_| counted) else { return };
        rows.push(SALES_DAILY_ORDERS.name, vec![Value::Date(day), Value::Integer(1)]);
        let mut skus: Vec<(&str, i64, i64)> = Vec::new();
        for line in &self.lines {
            match skus.iter_mut().find(|(sku, _, _)| *sku == line.sku) {
                Some((_, units, revenue)) => {
                    *units = units.saturating_add(line.qty);
                    *revenue = revenue.saturating_add(line_total(line));
                }
                None => skus.push((&line.sku, line.qty, line_total(line))),
            }
        }
        for (sku, units, revenue) in skus {
            rows.push(
                SALES_DAILY.name,
                vec![
                    Value::Date(day),
                    Value::Text(sku.to_owned()),
                    Value::Integer(1),
                    Value::Integer(units),
                    Value::Integer(revenue),
                ],
            );
        }
    }
}

/// The sales projection.
pub fn sales_daily() -> OrdersProjection<OrderSales> {
    Projection::new("sales_daily", locate_order as Locator)
        .with_raw_locator(order_stream)
        .with_tables(&TABLES)
}

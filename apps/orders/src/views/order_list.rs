//! Lists of orders (`GET /orders`, `GET /customers/{id}/orders`): the `customer_orders`
//! projection keeps every order as one row of the `customer_orders` table, indexed for
//! newest-first pages by customer, by status and by time.
//!
//! The row carries the order's document as JSON, so a page is one indexed query. A
//! customer's orders are rows like any other, so a customer with many orders costs no
//! more per new order than one with few.

use serde::{Deserialize, Serialize};
use strata::table::{Column, ColumnType, TableKind, TableRows, TableSpec, Value};
use strata::{ApplyError, Envelope, Projection, View};

use super::{Locator, OrderView, OrdersProjection, locate_order, order_stream};
use crate::domain::OrdersEvent;

/// One row per order.
pub static CUSTOMER_ORDERS: TableSpec = TableSpec {
    name: "customer_orders",
    columns: &[
        Column::new("order_id", ColumnType::Text),
        Column::new("customer_id", ColumnType::Text),
        Column::new("status", ColumnType::Text),
        Column::new("placed_at", ColumnType::Timestamp),
        Column::new("total_cents", ColumnType::Integer),
        Column::new("data", ColumnType::Text),
    ],
    key_columns: 1,
    indexes: &[
        &["placed_at", "order_id"],
        &["customer_id", "placed_at", "order_id"],
        &["status", "placed_at", "order_id"],
    ],
    kind: TableKind::Rows,
};

/// The tables of the projection.
static TABLES: [&TableSpec; 1] = [&CUSTOMER_ORDERS];

/// An order as the list keeps it: the order's own view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListedOrder(pub OrderView);

impl View<OrdersEvent> for ListedOrder {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) -> Result<(), ApplyError> {
        self.0.apply(event)
    }

    fn rows(&self, id: &str, rows: &mut TableRows) {
        let order = &self.0;
        // An order view always serializes; an empty document would only hide a bug.
        let data = serde_json::to_string(order).unwrap_or_default();
        rows.push(
            CUSTOMER_ORDERS.name,
            vec![
                Value::Text(id.to_owned()),
                Value::Text(order.customer_id.clone()),
                Value::Text(order.status.to_string()),
                Value::timestamp(order.placed_at),
                Value::Integer(order.total_cents),
                Value::Text(data),
            ],
        );
    }
}

/// The customer-orders projection. Version 4: as version 3, with why a cancelled order was
/// cancelled. Version 3: as version 2, with the payment method
/// `"unknown"` for orders placed without one (as `OrderPlaced` version 2 says); version 2
/// made one instance per order with a row each, where version 1 kept one growing document
/// per customer.
pub fn customer_orders() -> OrdersProjection<ListedOrder> {
    Projection::new("customer_orders", locate_order as Locator)
        .with_version(4)
        .with_raw_locator(order_stream)
        .with_tables(&TABLES)
}

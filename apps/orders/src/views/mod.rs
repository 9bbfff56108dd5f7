//! The service's read models, each kept by one projection: a customer, a product with its
//! stock, an order, every order as a row of the `customer_orders` table (for lists), and
//! sales per day and product in the `sales_daily` table (for reports). Queries read these,
//! never the event store.
//!
//! Every locator is a plain function of the event, and every projection can locate an event
//! that does not decode from its stream alone, so that such an event parks its instance
//! instead of stopping the projection.

mod customers;
mod order_list;
mod orders;
mod products;
mod sales;
mod search;

use strata::{Envelope, Projection, RecordedEvent};

use crate::domain::{Customer, Order, OrderLine, OrdersEvent, Product};
use strata::Aggregate;

pub use customers::{CustomerView, customers};
pub use order_list::{CUSTOMER_ORDERS, ListedOrder, customer_orders};
pub use orders::{OrderView, orders};
pub use products::{ProductView, products};
pub use sales::{OrderSales, SALES_DAILY, SALES_DAILY_ORDERS, sales_daily};
pub use search::{ORDER, ORDER_SEARCH, OrderIndexer};

/// A projection of the orders service: its locator is a plain function of the event.
pub type OrdersProjection<V> = Projection<OrdersEvent, V, Locator>;

/// A stateless view locator.
pub type Locator = fn(&Envelope<OrdersEvent>, &mut Vec<String>);

/// The names of every projection, as `/admin/projections` lists them; the last is the
/// framework's audit.
pub const PROJECTIONS: [&str; 6] =
    ["customers", "customer_orders", "products", "orders", "sales_daily", strata::audit::NAME];

/// Locates events of `aggregate_type` streams to the instance named by the stream id, from
/// the stored event alone.
fn by_stream(aggregate_type: &str, event: &RecordedEvent, ids: &mut Vec<String>) {
    if event.stream.aggregate_type == aggregate_type {
        ids.push(event.stream.id.clone());
    }
}

fn customer_stream(event: &RecordedEvent, ids: &mut Vec<String>) {
    by_stream(Customer::TYPE, event, ids);
}

fn product_stream(event: &RecordedEvent, ids: &mut Vec<String>) {
    by_stream(Product::TYPE, event, ids);
}

fn order_stream(event: &RecordedEvent, ids: &mut Vec<String>) {
    by_stream(Order::TYPE, event, ids);
}

fn locate_order(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Order(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

fn line_total(line: &OrderLine) -> i64 {
    line.qty.saturating_mul(line.price_cents)
}

fn total(lines: &[OrderLine]) -> i64 {
    lines.iter().map(line_total).fold(0, i64::saturating_add)
}

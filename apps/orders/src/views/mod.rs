//! The service's read models, each kept by one projection: a customer, a customer's orders,
//! a product with its stock, and an order. Queries read these, never the event store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::projection::Projection;
use strata::{Envelope, View};

use crate::domain::{CustomerEvent, OrderEvent, OrderLine, OrderStatus, OrdersEvent, ProductEvent};

/// A projection of the orders service: its locator is a plain function of the event.
pub type OrdersProjection<V> = Projection<OrdersEvent, V, Locator>;

/// A stateless view locator.
pub type Locator = fn(&Envelope<OrdersEvent>, &mut Vec<String>);

/// `GET /customers/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerView {
    /// The customer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
}

impl View<OrdersEvent> for CustomerView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) {
        if let OrdersEvent::Customer(CustomerEvent::CustomerRegistered(registered)) = &event.event {
            self.id = event.stream.id.clone();
            self.name = registered.name.clone();
            self.email = registered.email.clone();
        }
    }
}

fn locate_customer(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Customer(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

/// The customers projection.
pub fn customers() -> OrdersProjection<CustomerView> {
    Projection::new("customers", locate_customer as Locator)
}

/// One order in a customer's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrder {
    /// The order id.
    pub id: String,
    /// Its status.
    pub status: OrderStatus,
    /// Sum of qty × price over its lines.
    pub total_cents: i64,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
}

/// `GET /customers/{id}/orders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrdersView {
    /// The customer id.
    pub customer_id: String,
    /// The customer's orders, oldest first.
    pub orders: Vec<CustomerOrder>,
}

impl View<OrdersEvent> for CustomerOrdersView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) {
        let order_id = &event.stream.id;
        match &event.event {
            OrdersEvent::Customer(CustomerEvent::CustomerRegistered(_)) => {
                self.customer_id = event.stream.id.clone();
            }
            OrdersEvent::Order(OrderEvent::OrderPlaced(placed)) => {
                self.customer_id = placed.customer_id.clone();
                self.orders.push(CustomerOrder {
                    id: order_id.clone(),
                    status: OrderStatus::Placed,
                    total_cents: total(&placed.lines),
                    placed_at: event.metadata.recorded_at,
                });
            }
            OrdersEvent::Order(order_event) => {
                let Some(order) = self.orders.iter_mut().find(|o| &o.id == order_id) else {
                    return;
                };
                match order_event {
                    OrderEvent::LineAdded(added) => {
                        order.total_cents =
                            order.total_cents.saturating_add(line_total(&added.line));
                    }
                    OrderEvent::OrderConfirmed(_) => order.status = OrderStatus::Confirmed,
                    OrderEvent::OrderShipped(_) => order.status = OrderStatus::Shipped,
                    OrderEvent::OrderCancelled(_) => order.status = OrderStatus::Cancelled,
                    OrderEvent::OrderPlaced(_) => {}
                }
            }
            OrdersEvent::Product(_) => {}
        }
    }
}

fn locate_customer_orders(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    match &event.event {
        OrdersEvent::Customer(_) => ids.push(event.stream.id.clone()),
        OrdersEvent::Order(order_event) => ids.push(order_event.customer_id().to_owned()),
        OrdersEvent::Product(_) => {}
    }
}

/// The customer-orders projection.
pub fn customer_orders() -> OrdersProjection<CustomerOrdersView> {
    Projection::new("customer_orders", locate_customer_orders as Locator)
}

/// `GET /products/{sku}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    /// The product's sku.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Current price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub on_hand: i64,
}

impl View<OrdersEvent> for ProductView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) {
        match &event.event {
            OrdersEvent::Product(ProductEvent::ProductCreated(created)) => {
                self.sku = event.stream.id.clone();
                self.name = created.name.clone();
                self.price_cents = created.price_cents;
            }
            OrdersEvent::Product(ProductEvent::ProductRestocked(restocked)) => {
                // Saturating: a view must never panic on a stored event.
                self.on_hand = self.on_hand.saturating_add(restocked.qty);
            }
            _ => {}
        }
    }
}

fn locate_product(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Product(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

/// The products projection.
pub fn products() -> OrdersProjection<ProductView> {
    Projection::new("products", locate_product as Locator)
}

/// `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order id.
    pub id: String,
    /// The customer who placed it.
    pub customer_id: String,
    /// Its status.
    pub status: OrderStatus,
    /// Its lines, in the order they were added.
    pub lines: Vec<OrderLine>,
    /// Sum of qty × price over its lines.
    pub total_cents: i64,
    /// How the customer pays.
    pub payment_method: Option<String>,
    /// Where it goes.
    pub shipping_address: Option<String>,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// The order stream's version this view reflects; also the `ETag`.
    pub version: u64,
}

impl Default for OrderView {
    fn default() -> Self {
        Self {
            id: String::new(),
            customer_id: String::new(),
            status: OrderStatus::Placed,
            lines: Vec::new(),
            total_cents: 0,
            payment_method: None,
            shipping_address: None,
            placed_at: DateTime::<Utc>::UNIX_EPOCH,
            version: 0,
        }
    }
}

impl View<OrdersEvent> for OrderView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) {
        let OrdersEvent::Order(order_event) = &event.event else { return };
        self.version = event.version.0;
        match order_event {
            OrderEvent::OrderPlaced(placed) => {
                self.id = event.stream.id.clone();
                self.customer_id = placed.customer_id.clone();
                self.lines = placed.lines.clone();
                self.total_cents = total(&placed.lines);
                self.payment_method = placed.payment_method.clone();
                self.shipping_address = placed.shipping_address.clone();
                self.placed_at = event.metadata.recorded_at;
            }
            OrderEvent::LineAdded(added) => {
                self.total_cents = self.total_cents.saturating_add(line_total(&added.line));
                self.lines.push(added.line.clone());
            }
            OrderEvent::OrderConfirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped(_) => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
        }
    }
}

fn locate_order(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Order(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

/// The orders projection.
pub fn orders() -> OrdersProjection<OrderView> {
    Projection::new("orders", locate_order as Locator)
}

fn line_total(line: &OrderLine) -> i64 {
    line.qty.saturating_mul(line.price_cents)
}

fn total(lines: &[OrderLine]) -> i64 {
    lines.iter().map(line_total).fold(0, i64::saturating_add)
}

//! `GET /orders/{id}`: one document per order. The same state is the instance of the
//! `customer_orders` projection, which lists it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{ApplyError, Envelope, Projection, View};

use super::{Locator, OrdersProjection, line_total, locate_order, order_stream, total};
use crate::domain::{OrderEvent, OrderLine, OrderStatus, OrdersEvent};

/// An order as queries show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Why it was cancelled, once it is: the customer's words, or `out_of_stock`,
    /// `expired` or `timeout`.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// The products whose stock ran short, when that cancelled it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_of_stock_skus: Vec<String>,
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
            cancel_reason: None,
            out_of_stock_skus: Vec::new(),
            version: 0,
        }
    }
}

impl View<OrdersEvent> for OrderView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) -> Result<(), ApplyError> {
        let OrdersEvent::Order(order_event) = &event.event else { return Ok(()) };
        if self.version == 0 && !matches!(order_event, OrderEvent::OrderPlaced(_)) {
            // The log of one order starts with its placement; anything else means events
            // were lost or reordered upstream, and the view must not invent an order.
            return Err(ApplyError::new(format!(
                "{} arrived before the order was placed",
                strata::DomainEvent::event_type(order_event)
            )));
        }
        self.version = event.version.0;
        match order_event {
            OrderEvent::OrderPlaced(placed) => {
                self.id = event.stream.id.clone();
                self.customer_id = placed.customer_id.clone();
                self.lines = placed.lines.clone();
                self.total_cents = total(&placed.lines);
                self.payment_method = Some(placed.payment_method.clone());
                self.shipping_address = placed.shipping_address.clone();
                self.placed_at = event.metadata.recorded_at;
            }
            OrderEvent::LineAdded(added) => {
                self.total_cents = self.total_cents.saturating_add(line_total(&added.line));
                self.lines.push(added.line.clone());
            }
            OrderEvent::OrderConfirmationRequested(_) => self.status = OrderStatus::Confirming,
            OrderEvent::LineUnavailable(_) => {}
            OrderEvent::OrderConfirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped(_) => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled(cancelled) => {
                self.status = OrderStatus::Cancelled;
                self.cancel_reason = Some(cancelled.reason.clone());
                self.out_of_stock_skus = cancelled.out_of_stock_skus.clone();
            }
        }
        Ok(())
    }
}

/// The orders projection. Version 2: the payment method is `"unknown"` for orders placed
/// without one, as `OrderPlaced` version 2 says. Version 3: cancelled orders say why.
pub fn orders() -> OrdersProjection<OrderView> {
    Projection::new("orders", locate_order as Locator)
        .with_version(3)
        .with_raw_locator(order_stream)
}

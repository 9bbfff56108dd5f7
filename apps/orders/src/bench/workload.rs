//! Workload W1, the standard benchmark: orders that are placed once and then get lines, and
//! one `order_summary` view per order. Deliberately separate from the service's domain so
//! that figures stay comparable across versions of the service.

use serde::{Deserialize, Serialize};
use strata::projection::Projection;
use strata::{Aggregate, ApplyError, Decision, Envelope, Rejection, RejectionKind, View};

use crate::domain::json_events;

/// A W1 order: placed, then lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BenchOrder {
    placed: bool,
}

/// W1's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchCommand {
    /// `PlaceOrder {order_id, customer_id, total_cents}`; rejected if the order exists.
    PlaceOrder {
        /// The customer.
        customer_id: String,
        /// The order's opening total.
        total_cents: i64,
    },
    /// `AddLine {order_id, sku, qty, price_cents}`; rejected if the order does not exist or
    /// qty is 0.
    AddLine {
        /// The product.
        sku: String,
        /// Units.
        qty: i64,
        /// Price per unit.
        price_cents: i64,
    },
}

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The customer.
    pub customer_id: String,
    /// The order's opening total.
    pub total_cents: i64,
}

/// A line was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineAdded {
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: i64,
    /// Price per unit.
    pub price_cents: i64,
}

/// W1's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchEvent {
    /// See [`OrderPlaced`].
    OrderPlaced(OrderPlaced),
    /// See [`LineAdded`].
    LineAdded(LineAdded),
}
json_events!(BenchEvent { OrderPlaced, LineAdded });

/// Why a W1 command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BenchError {
    /// Placed twice.
    #[error("order already exists")]
    AlreadyExists,
    /// A line for an order never placed.
    #[error("order does not exist")]
    NotFound,
    /// A line of zero units.
    #[error("qty must not be 0")]
    ZeroQty,
}

impl Rejection for BenchError {
    fn kind(&self) -> RejectionKind {
        match self {
            BenchError::AlreadyExists => RejectionKind::Conflict,
            BenchError::NotFound => RejectionKind::NotFound,
            BenchError::ZeroQty => RejectionKind::BrokenRule,
        }
    }
}

impl Aggregate for BenchOrder {
    const TYPE: &'static str = "order";
    type Command = BenchCommand;
    type Event = BenchEvent;
    type Error = BenchError;

    fn apply(&mut self, event: &BenchEvent) {
        if let BenchEvent::OrderPlaced(_) = event {
            self.placed = true;
        }
    }

    fn handle(d: &mut Decision<'_, Self>, command: BenchCommand) -> Result<(), BenchError> {
        match command {
            BenchCommand::PlaceOrder { customer_id, total_cents } => {
                if d.placed {
                    return Err(BenchError::AlreadyExists);
                }
                d.emit(BenchEvent::OrderPlaced(OrderPlaced { customer_id, total_cents }));
            }
            BenchCommand::AddLine { sku, qty, price_cents } => {
                if !d.placed {
                    return Err(BenchError::NotFound);
                }
                if qty == 0 {
                    return Err(BenchError::ZeroQty);
                }
                d.emit(BenchEvent::LineAdded(LineAdded { sku, qty, price_cents }));
            }
        }
        Ok(())
    }
}

/// The `order_summary` view: who placed the order, how many lines, and their total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The customer.
    pub customer_id: String,
    /// Number of lines added.
    pub lines: u64,
    /// Sum of qty × price over the lines.
    pub total_cents: i64,
}

impl View<BenchEvent> for OrderSummary {
    fn apply(&mut self, event: &Envelope<BenchEvent>) -> Result<(), ApplyError> {
        match &event.event {
            BenchEvent::OrderPlaced(placed) => self.customer_id = placed.customer_id.clone(),
            BenchEvent::LineAdded(line) => {
                self.lines += 1;
                self.total_cents += line.qty * line.price_cents;
            }
        }
        Ok(())
    }
}

type Locator = fn(&Envelope<BenchEvent>, &mut Vec<String>);

fn locate_order(event: &Envelope<BenchEvent>, ids: &mut Vec<String>) {
    ids.push(event.stream.id.clone());
}

/// The name of W1's projection and view.
pub const ORDER_SUMMARY: &str = "order_summary";

/// The `order_summary` projection.
pub fn order_summary() -> Projection<BenchEvent, OrderSummary, Locator> {
    Projection::new(ORDER_SUMMARY, locate_order as Locator)
}

/// Lines each order gets after it is placed.
pub const LINES_PER_ORDER: u64 = 9;

/// The id of order `n`.
pub fn order_id(n: u64) -> String {
    format!("o{n}")
}

/// The customer of order `n`.
pub fn customer_id(n: u64) -> String {
    format!("c{}", n % 1000)
}

/// The line `k` (0-based) of every order: qty and price chosen so totals are checkable.
pub fn line(k: u64) -> (String, i64, i64) {
    let k = k as i64;
    (format!("sku{k}"), k + 1, 100 + k)
}

/// What `order_summary` must hold for an order that got `lines` lines 0..lines.
pub fn expected_summary(n: u64, lines: u64) -> OrderSummary {
    let total_cents = (0..lines).map(line).map(|(_, qty, price)| qty * price).sum();
    OrderSummary { customer_id: customer_id(n), lines, total_cents }
}

//! An order: placed with lines; confirming once asked to confirm, while the fulfilment saga
//! reserves its stock; then confirmed and shipped, or cancelled (by the customer while
//! placed, confirming or confirmed; by the saga when stock is short, the order expires or
//! the confirmation times out). Lines are added only while the order is placed.
//!
//! The saga's commands (`CompleteConfirmation`, `RecordShortage`, `CancelForShortage`,
//! `Expire`, `TimeOut`) do nothing when the order has moved on meanwhile, instead of being
//! refused: the saga decided on an older state, and the newer one already says what happened.
//!
//! Every order event carries the customer id, so that views keyed by customer can be located
//! from the event alone (a locator holds no state).

use std::fmt;

use serde::{Deserialize, Serialize};
use strata::{Aggregate, Decision, Rejection, RejectionKind, SnapshotPolicy};

use super::json_events;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; lines may still be added.
    Placed,
    /// Asked to confirm; its stock is being reserved.
    Confirming,
    /// Confirmed; waiting to ship.
    Confirmed,
    /// Shipped; final.
    Shipped,
    /// Cancelled; final.
    Cancelled,
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirming => "confirming",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        })
    }
}

/// One line of an order, priced when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// Units ordered, positive.
    pub qty: i64,
    /// The product's price when the line was added.
    pub price_cents: i64,
}

/// An order's decision state; snapshotted every 100 events (format 1 is this struct as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `None` until placed.
    pub status: Option<OrderStatus>,
    /// The customer who placed it.
    pub customer_id: String,
}

/// What can be asked of an order. Lines arrive priced: the application reads the price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Places a new order.
    Place {
        /// The customer placing it (checked to exist by the application).
        customer_id: String,
        /// Its first lines.
        lines: Vec<OrderLine>,
        /// How the customer pays, if said.
        payment_method: Option<String>,
        /// Where it goes, if said.
        shipping_address: Option<String>,
    },
    /// Adds a line to a placed order.
    AddLine(OrderLine),
    /// Asks to confirm a placed order: its stock is reserved next.
    Confirm,
    /// Confirms an order whose stock is reserved (sent by the fulfilment saga).
    CompleteConfirmation,
    /// Records that a line's stock could not be reserved (sent by the saga).
    RecordShortage {
        /// The line's product.
        sku: String,
    },
    /// Cancels a confirming order whose stock ran short (sent by the saga, after it
    /// released what it had reserved).
    CancelForShortage {
        /// The products short.
        skus: Vec<String>,
    },
    /// Cancels an order still placed when its time to be confirmed ran out.
    Expire,
    /// Cancels an order still confirming when its time to be reserved ran out.
    TimeOut,
    /// Ships a confirmed order.
    Ship,
    /// Cancels a placed or confirmed order.
    Cancel {
        /// Why, not empty.
        reason: String,
    },
}

/// An order was placed. Schema version 2; version 1 had no payment method or address (see
/// `schemas.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The customer.
    pub customer_id: String,
    /// Its first lines.
    pub lines: Vec<OrderLine>,
    /// How the customer pays; `"unknown"` when the order did not say.
    pub payment_method: String,
    /// Where it goes.
    pub shipping_address: Option<String>,
}

/// A line was added to a placed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineAdded {
    /// The customer.
    pub customer_id: String,
    /// The line.
    pub line: OrderLine,
}

/// A status change without further data: confirmed or shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    /// The customer.
    pub customer_id: String,
}

/// An order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The customer.
    pub customer_id: String,
    /// Why: the customer's words, or `out_of_stock`, `expired` or `timeout`.
    pub reason: String,
    /// The products whose stock ran short, when that is why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_of_stock_skus: Vec<String>,
}

/// A line's stock could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineUnavailable {
    /// The customer.
    pub customer_id: String,
    /// The product.
    pub sku: String,
}

/// Why the saga cancels an order whose stock ran short.
pub const OUT_OF_STOCK: &str = "out_of_stock";
/// Why the saga cancels an order left placed too long.
pub const EXPIRED: &str = "expired";
/// Why the saga cancels an order whose stock was not reserved in time.
pub const TIMEOUT: &str = "timeout";

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// See [`OrderPlaced`].
    OrderPlaced(OrderPlaced),
    /// See [`LineAdded`].
    LineAdded(LineAdded),
    /// Confirmation was asked for; the order is confirming.
    OrderConfirmationRequested(OrderStatusChanged),
    /// See [`LineUnavailable`].
    LineUnavailable(LineUnavailable),
    /// The order was confirmed.
    OrderConfirmed(OrderStatusChanged),
    /// The order was shipped.
    OrderShipped(OrderStatusChanged),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
}
json_events!(OrderEvent {
    OrderPlaced,
    LineAdded,
    OrderConfirmationRequested,
    LineUnavailable,
    OrderConfirmed,
    OrderShipped,
    OrderCancelled
});

impl OrderEvent {
    /// The customer the order belongs to.
    pub fn customer_id(&self) -> &str {
        match self {
            OrderEvent::OrderPlaced(e) => &e.customer_id,
            OrderEvent::LineAdded(e) => &e.customer_id,
            OrderEvent::LineUnavailable(e) => &e.customer_id,
            OrderEvent::OrderConfirmationRequested(e)
            | OrderEvent::OrderConfirmed(e)
            | OrderEvent::OrderShipped(e) => &e.customer_id,
            OrderEvent::OrderCancelled(e) => &e.customer_id,
        }
    }
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The id is taken.
    #[error("order already exists")]
    AlreadyExists,
    /// The order does not exist.
    #[error("order does not exist")]
    NotFound,
    /// The order's status does not allow the action.
    #[error("cannot {action} an order that is {status}")]
    WrongStatus {
        /// What was asked.
        action: &'static str,
        /// The order's status.
        status: OrderStatus,
    },
    /// A line's quantity is zero or less.
    #[error("qty must be greater than 0 (sku {sku})")]
    NonPositiveQty {
        /// The line's product.
        sku: String,
    },
    /// A line's quantity is above [`super::product::MAX_QTY`].
    #[error("qty must be at most {max} (sku {sku})", max = super::product::MAX_QTY)]
    QtyTooLarge {
        /// The line's product.
        sku: String,
    },
    /// A cancellation without a reason.
    #[error("reason must not be empty")]
    EmptyReason,
}

impl Rejection for OrderError {
    fn kind(&self) -> RejectionKind {
        match self {
            OrderError::AlreadyExists | OrderError::WrongStatus { .. } => RejectionKind::Conflict,
            OrderError::NotFound => RejectionKind::NotFound,
            OrderError::NonPositiveQty { .. }
            | OrderError::QtyTooLarge { .. }
            | OrderError::EmptyReason => RejectionKind::BrokenRule,
        }
    }
}

fn check_line(line: &OrderLine) -> Result<(), OrderError> {
    if line.qty <= 0 {
        return Err(OrderError::NonPositiveQty { sku: line.sku.clone() });
    }
    if line.qty > super::product::MAX_QTY {
        return Err(OrderError::QtyTooLarge { sku: line.sku.clone() });
    }
    Ok(())
}

impl Order {
    fn require(&self, action: &'static str, allowed: &[OrderStatus]) -> Result<(), OrderError> {
        let status = self.status.ok_or(OrderError::NotFound)?;
        if allowed.contains(&status) {
            Ok(())
        } else {
            Err(OrderError::WrongStatus { action, status })
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn command_name(command: &OrderCommand) -> &'static str {
        match command {
            OrderCommand::Place { .. } => "Place",
            OrderCommand::AddLine(_) => "AddLine",
            OrderCommand::Confirm => "Confirm",
            OrderCommand::CompleteConfirmation => "CompleteConfirmation",
            OrderCommand::RecordShortage { .. } => "RecordShortage",
            OrderCommand::CancelForShortage { .. } => "CancelForShortage",
            OrderCommand::Expire => "Expire",
            OrderCommand::TimeOut => "TimeOut",
            OrderCommand::Ship => "Ship",
            OrderCommand::Cancel { .. } => "Cancel",
        }
    }

    const SNAPSHOTS: Option<SnapshotPolicy> = Some(SnapshotPolicy { every: 100, format: 1 });

    fn to_snapshot(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }

    fn from_snapshot(state: &[u8]) -> Option<Self> {
        serde_json::from_slice(state).ok()
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced(placed) => {
                self.status = Some(OrderStatus::Placed);
                self.customer_id = placed.customer_id.clone();
            }
            OrderEvent::LineAdded(_) | OrderEvent::LineUnavailable(_) => {}
            OrderEvent::OrderConfirmationRequested(_) => {
                self.status = Some(OrderStatus::Confirming)
            }
            OrderEvent::OrderConfirmed(_) => self.status = Some(OrderStatus::Confirmed),
            OrderEvent::OrderShipped(_) => self.status = Some(OrderStatus::Shipped),
            OrderEvent::OrderCancelled(_) => self.status = Some(OrderStatus::Cancelled),
        }
    }

    fn handle(d: &mut Decision<'_, Self>, command: OrderCommand) -> Result<(), OrderError> {
        use OrderStatus::{Confirmed, Confirming, Placed};
        let customer_id = d.customer_id.clone();
        let cancelled = |reason: &str, out_of_stock_skus: Vec<String>| {
            OrderEvent::OrderCancelled(OrderCancelled {
                customer_id: customer_id.clone(),
                reason: reason.to_owned(),
                out_of_stock_skus,
            })
        };
        match command {
            OrderCommand::Place { customer_id, lines, payment_method, shipping_address } => {
                if d.status.is_some() {
                    return Err(OrderError::AlreadyExists);
                }
                lines.iter().try_for_each(check_line)?;
                d.emit(OrderEvent::OrderPlaced(OrderPlaced {
                    customer_id,
                    lines,
                    payment_method: payment_method
                        .unwrap_or_else(|| super::schemas::UNKNOWN_PAYMENT_METHOD.to_owned()),
                    shipping_address,
                }));
            }
            OrderCommand::AddLine(line) => {
                d.require("add a line to", &[Placed])?;
                check_line(&line)?;
                d.emit(OrderEvent::LineAdded(LineAdded { customer_id, line }));
            }
            OrderCommand::Confirm => {
                d.require("confirm", &[Placed])?;
                d.emit(OrderEvent::OrderConfirmationRequested(OrderStatusChanged { customer_id }));
            }
            OrderCommand::CompleteConfirmation => {
                if d.status == Some(Confirming) {
                    d.emit(OrderEvent::OrderConfirmed(OrderStatusChanged { customer_id }));
                }
            }
            OrderCommand::RecordShortage { sku } => {
                if d.status == Some(Confirming) {
                    d.emit(OrderEvent::LineUnavailable(LineUnavailable { customer_id, sku }));
                }
            }
            OrderCommand::CancelForShortage { skus } => {
                if d.status == Some(Confirming) {
                    d.emit(cancelled(OUT_OF_STOCK, skus));
                }
            }
            OrderCommand::Expire => {
                if d.status == Some(Placed) {
                    d.emit(cancelled(EXPIRED, Vec::new()));
                }
            }
            OrderCommand::TimeOut => {
                if d.status == Some(Confirming) {
                    d.emit(cancelled(TIMEOUT, Vec::new()));
                }
            }
            OrderCommand::Ship => {
                d.require("ship", &[Confirmed])?;
                d.emit(OrderEvent::OrderShipped(OrderStatusChanged { customer_id }));
            }
            OrderCommand::Cancel { reason } => {
                d.require("cancel", &[Placed, Confirming, Confirmed])?;
                if reason.trim().is_empty() {
                    return Err(OrderError::EmptyReason);
                }
                d.emit(cancelled(&reason, Vec::new()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use strata::testing::given;

    use super::*;
    use OrderStatus::*;

    fn line(sku: &str, qty: i64) -> OrderLine {
        OrderLine { sku: sku.into(), qty, price_cents: 250 }
    }

    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::Place {
            customer_id: "c1".into(),
            lines,
            payment_method: Some("card".into()),
            shipping_address: None,
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "c1".into(),
            lines: vec![line("tea", 2)],
            payment_method: "card".into(),
            shipping_address: None,
        })
    }

    fn changed() -> OrderStatusChanged {
        OrderStatusChanged { customer_id: "c1".into() }
    }

    fn confirming() -> OrderEvent {
        OrderEvent::OrderConfirmationRequested(changed())
    }

    fn confirmed() -> OrderEvent {
        OrderEvent::OrderConfirmed(changed())
    }

    fn shipped() -> OrderEvent {
        OrderEvent::OrderShipped(changed())
    }

    fn cancelled() -> OrderEvent {
        OrderEvent::OrderCancelled(OrderCancelled {
            customer_id: "c1".into(),
            reason: "changed mind".into(),
            out_of_stock_skus: Vec::new(),
        })
    }

    fn cancelled_by_saga(reason: &str, skus: &[&str]) -> OrderEvent {
        OrderEvent::OrderCancelled(OrderCancelled {
            customer_id: "c1".into(),
            reason: reason.into(),
            out_of_stock_skus: skus.iter().map(|sku| (*sku).to_owned()).collect(),
        })
    }

    fn cancel() -> OrderCommand {
        OrderCommand::Cancel { reason: "changed mind".into() }
    }

    #[test]
    fn an_order_is_placed_once() {
        given::<Order>([]).when(place(vec![line("tea", 2)])).then([placed()]);
        given::<Order>([placed()]).when(place(vec![])).then_error(OrderError::AlreadyExists);
    }

    #[test]
    fn every_line_needs_a_positive_quantity() {
        let refused = OrderError::NonPositiveQty { sku: "cake".into() };
        given::<Order>([])
            .when(place(vec![line("tea", 1), line("cake", 0)]))
            .then_error(refused.clone());
        given::<Order>([placed()])
            .when(OrderCommand::AddLine(line("cake", -3)))
            .then_error(OrderError::NonPositiveQty { sku: "cake".into() });
    }

    #[test]
    fn lines_are_added_only_while_placed() {
        let added =
            OrderEvent::LineAdded(LineAdded { customer_id: "c1".into(), line: line("cake", 1) });
        given::<Order>([placed()]).when(OrderCommand::AddLine(line("cake", 1))).then([added]);
        given::<Order>([placed(), confirmed()])
            .when(OrderCommand::AddLine(line("cake", 1)))
            .then_error(OrderError::WrongStatus { action: "add a line to", status: Confirmed });
        given::<Order>([])
            .when(OrderCommand::AddLine(line("cake", 1)))
            .then_error(OrderError::NotFound);
    }

    #[test]
    fn placed_then_confirming_then_confirmed_then_shipped() {
        given::<Order>([placed()]).when(OrderCommand::Confirm).then([confirming()]);
        given::<Order>([placed(), confirming()])
            .when(OrderCommand::CompleteConfirmation)
            .then([confirmed()]);
        given::<Order>([placed(), confirming()])
            .when(OrderCommand::Ship)
            .then_error(OrderError::WrongStatus { action: "ship", status: Confirming });
        given::<Order>([placed(), confirmed()]).when(OrderCommand::Ship).then([shipped()]);
        given::<Order>([placed()])
            .when(OrderCommand::Ship)
            .then_error(OrderError::WrongStatus { action: "ship", status: Placed });
        given::<Order>([placed(), confirmed()])
            .when(OrderCommand::Confirm)
            .then_error(OrderError::WrongStatus { action: "confirm", status: Confirmed });
        given::<Order>([]).when(OrderCommand::Confirm).then_error(OrderError::NotFound);
    }

    #[test]
    fn the_sagas_commands_act_only_on_the_state_they_were_decided_for() {
        let shortage = OrderEvent::LineUnavailable(LineUnavailable {
            customer_id: "c1".into(),
            sku: "tea".into(),
        });
        given::<Order>([placed(), confirming()])
            .when(OrderCommand::RecordShortage { sku: "tea".into() })
            .then([shortage]);
        given::<Order>([placed(), confirming()])
            .when(OrderCommand::CancelForShortage { skus: vec!["tea".into()] })
            .then([cancelled_by_saga(OUT_OF_STOCK, &["tea"])]);
        given::<Order>([placed()])
            .when(OrderCommand::Expire)
            .then([cancelled_by_saga(EXPIRED, &[])]);
        given::<Order>([placed(), confirming()])
            .when(OrderCommand::TimeOut)
            .then([cancelled_by_saga(TIMEOUT, &[])]);
        // Moved on meanwhile: nothing happens, and nothing is refused.
        given::<Order>([placed(), confirming()]).when(OrderCommand::Expire).then([]);
        given::<Order>([placed(), confirming(), confirmed()]).when(OrderCommand::TimeOut).then([]);
        given::<Order>([placed(), confirming(), cancelled()])
            .when(OrderCommand::CompleteConfirmation)
            .then([]);
    }

    #[test]
    fn placed_or_confirmed_orders_can_be_cancelled_with_a_reason() {
        given::<Order>([placed(), confirming()]).when(cancel()).then([cancelled()]);
        given::<Order>([placed()]).when(cancel()).then([cancelled()]);
        given::<Order>([placed(), confirmed()]).when(cancel()).then([cancelled()]);
        given::<Order>([placed(), confirmed(), shipped()])
            .when(cancel())
            .then_error(OrderError::WrongStatus { action: "cancel", status: Shipped });
        given::<Order>([placed(), cancelled()])
            .when(cancel())
            .then_error(OrderError::WrongStatus { action: "cancel", status: Cancelled });
        given::<Order>([placed()])
            .when(OrderCommand::Cancel { reason: " ".into() })
            .then_error(OrderError::EmptyReason);
    }

    #[test]
    fn replaying_the_events_reproduces_the_state() {
        let events = [placed(), confirmed(), shipped()];
        let once = strata::aggregate::replay::<Order>(&events);
        let twice = strata::aggregate::replay::<Order>(&events);
        assert_eq!(once, twice);
        assert_eq!(once.status, Some(Shipped));
    }
}

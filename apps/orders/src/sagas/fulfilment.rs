//! The fulfilment saga: one instance per order, from placement to shipping or cancellation.
//!
//! - Placed: the order expires (`Expire`) if not asked to confirm within the order TTL.
//! - Confirming: every line's stock is reserved (`ReserveStock`, one per sku). A refusal is
//!   recorded on the order (`RecordShortage`, an event the saga reads). Once every line has
//!   an answer: all reserved confirms the order; any short releases what was reserved and
//!   then cancels it as `out_of_stock`. If that takes longer than the confirm timeout, the
//!   order is cancelled as `timeout`.
//! - Cancelled, however: every reservation is released, including ones that arrive later.
//! - Shipped: every reservation leaves the stock with the order (`ShipReserved`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata::saga::{Actions, DispatchError, Saga, SagaStatus, SagaTables};
use strata::{
    Aggregate, ApplyError, CommandBus, CommandContext, CommandError, Envelope, EventStore,
    RawLocator, RecordedEvent, saga_tables,
};

use crate::domain::order::{EXPIRED, OUT_OF_STOCK, TIMEOUT};
use crate::domain::{
    Order, OrderCommand, OrderEvent, OrdersEvent, Product, ProductCommand, ProductEvent,
};

saga_tables!(pub FULFILMENT, FULFILMENT_TABLES, "fulfilment");

/// How long orders may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfilmentSettings {
    /// How long an order may stay placed before it is cancelled as `expired`.
    pub order_ttl: Duration,
    /// How long reserving an order's stock may take before it is cancelled as `timeout`.
    pub confirm_timeout: Duration,
}

impl Default for FulfilmentSettings {
    fn default() -> Self {
        Self { order_ttl: Duration::from_secs(15 * 60), confirm_timeout: Duration::from_secs(60) }
    }
}

/// Where an order is, as its saga knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Nothing seen yet.
    #[default]
    New,
    /// Placed.
    Placed,
    /// Reserving stock.
    Confirming,
    /// Confirmed, stock reserved.
    Confirmed,
    /// Shipped.
    Shipped,
    /// Cancelled.
    Cancelled,
}

/// One order's saga state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfilment {
    /// Where the order is.
    pub stage: Stage,
    /// Units ordered, by sku.
    pub lines: BTreeMap<String, i64>,
    /// Skus asked to reserve that have not answered yet.
    pub awaiting: BTreeSet<String>,
    /// Units reserved, by sku.
    pub reserved: BTreeMap<String, i64>,
    /// Skus whose stock was short.
    pub short: Vec<String>,
    /// Skus whose reservation is being released or shipped.
    pub settling: BTreeSet<String>,
    /// Whether the outcome of the confirmation was decided.
    pub decided: bool,
    /// Why the order was cancelled.
    pub cancel_reason: Option<String>,
}

/// What the fulfilment saga sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum FulfilmentCommand {
    /// Reserves `qty` of `sku` for the order.
    Reserve {
        /// The product.
        sku: String,
        /// Units.
        qty: i64,
    },
    /// Gives the order's reservation of `sku` back.
    Release {
        /// The product.
        sku: String,
    },
    /// Takes the order's reservation of `sku` out of the stock.
    ShipReserved {
        /// The product.
        sku: String,
    },
    /// Confirms the order.
    Complete,
    /// Cancels the order for the skus that ran short.
    CancelForShortage {
        /// The products.
        skus: Vec<String>,
    },
    /// Cancels the order if it is still placed.
    Expire,
    /// Cancels the order if it is still confirming, and then gives back whatever it holds
    /// of `skus` (its lines): the saga may be stuck and unable to release them itself.
    TimeOut {
        /// The order's products.
        skus: Vec<String>,
    },
}

const EXPIRY: &str = "expiry";
const CONFIRMATION: &str = "confirmation";

/// The saga, sending through `bus`.
pub struct FulfilmentSaga<S> {
    bus: Arc<CommandBus<S>>,
    settings: FulfilmentSettings,
}

impl<S> FulfilmentSaga<S> {
    /// The saga with its settings.
    pub fn new(bus: Arc<CommandBus<S>>, settings: FulfilmentSettings) -> Self {
        Self { bus, settings }
    }
}

fn after(event: &Envelope<OrdersEvent>, wait: Duration) -> chrono::DateTime<chrono::Utc> {
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    event
        .metadata
        .recorded_at
        .checked_add_signed(wait)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

impl Fulfilment {
    /// Once every line has answered: confirm, or release and cancel.
    fn decide(&mut self, actions: &mut Actions<FulfilmentCommand>) {
        if self.stage != Stage::Confirming || self.decided || !self.awaiting.is_empty() {
            return;
        }
        self.decided = true;
        if self.short.is_empty() {
            actions.send(FulfilmentCommand::Complete);
            return;
        }
        self.release_all(actions);
        actions.send(FulfilmentCommand::CancelForShortage { skus: self.short.clone() });
    }

    fn release_all(&mut self, actions: &mut Actions<FulfilmentCommand>) {
        for sku in self.reserved.keys() {
            if self.settling.insert(sku.clone()) {
                actions.send(FulfilmentCommand::Release { sku: sku.clone() });
            }
        }
    }

    fn on_order(
        &mut self,
        event: &OrderEvent,
        envelope: &Envelope<OrdersEvent>,
        settings: FulfilmentSettings,
        actions: &mut Actions<FulfilmentCommand>,
    ) {
        match event {
            OrderEvent::OrderPlaced(placed) => {
                self.stage = Stage::Placed;
                for line in &placed.lines {
                    let qty = self.lines.entry(line.sku.clone()).or_default();
                    *qty = qty.saturating_add(line.qty);
                }
                let due = after(envelope, settings.order_ttl);
                actions.schedule(EXPIRY, due, FulfilmentCommand::Expire);
            }
            OrderEvent::LineAdded(added) => {
                let qty = self.lines.entry(added.line.sku.clone()).or_default();
                *qty = qty.saturating_add(added.line.qty);
            }
            OrderEvent::OrderConfirmationRequested(_) => {
                self.stage = Stage::Confirming;
                actions.cancel(EXPIRY);
                let due = after(envelope, settings.confirm_timeout);
                let skus = self.lines.keys().cloned().collect();
                actions.schedule(CONFIRMATION, due, FulfilmentCommand::TimeOut { skus });
                for (sku, qty) in &self.lines {
                    self.awaiting.insert(sku.clone());
                    actions.send(FulfilmentCommand::Reserve { sku: sku.clone(), qty: *qty });
                }
                self.decide(actions);
            }
            OrderEvent::LineUnavailable(unavailable) => {
                if self.awaiting.remove(&unavailable.sku) {
                    self.short.push(unavailable.sku.clone());
                }
                self.decide(actions);
            }
            OrderEvent::OrderConfirmed(_) => {
                // Orders confirmed before the saga existed were never confirming.
                self.stage = Stage::Confirmed;
                actions.cancel(EXPIRY);
                actions.cancel(CONFIRMATION);
            }
            OrderEvent::OrderShipped(_) => {
                self.stage = Stage::Shipped;
                actions.cancel(EXPIRY);
                actions.cancel(CONFIRMATION);
                for sku in self.reserved.keys() {
                    if self.settling.insert(sku.clone()) {
                        actions.send(FulfilmentCommand::ShipReserved { sku: sku.clone() });
                    }
                }
            }
            OrderEvent::OrderCancelled(cancelled) => {
                self.stage = Stage::Cancelled;
                self.cancel_reason = Some(cancelled.reason.clone());
                actions.cancel(EXPIRY);
                actions.cancel(CONFIRMATION);
                self.release_all(actions);
            }
        }
    }

    fn on_stock(
        &mut self,
        sku: &str,
        event: &ProductEvent,
        actions: &mut Actions<FulfilmentCommand>,
    ) {
        match event {
            ProductEvent::StockReserved(moved) => {
                let reserved = self.reserved.entry(sku.to_owned()).or_default();
                *reserved = reserved.saturating_add(moved.qty);
                self.awaiting.remove(sku);
                if self.stage == Stage::Cancelled {
                    // Reserved after the order was cancelled: give it back at once.
                    self.release_all(actions);
                } else {
                    self.decide(actions);
                }
            }
            ProductEvent::StockReleased(_) | ProductEvent::ReservedStockShipped(_) => {
                self.reserved.remove(sku);
                self.settling.remove(sku);
            }
            ProductEvent::ProductCreated(_) | ProductEvent::ProductRestocked(_) => {}
        }
    }
}

impl<S: EventStore> Saga<OrdersEvent> for FulfilmentSaga<S> {
    const NAME: &'static str = "fulfilment";
    const TABLES: &'static SagaTables = &FULFILMENT;
    const ID_FIELD: &'static str = "order_id";
    const RAW_LOCATOR: Option<RawLocator> = Some(locate_raw);
    type State = Fulfilment;
    type Command = FulfilmentCommand;

    fn locate(&self, event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
        match &event.event {
            OrdersEvent::Order(_) => ids.push(event.stream.id.clone()),
            OrdersEvent::Product(product) => {
                if let Some(order_id) = product.order_id() {
                    ids.push(order_id.to_owned());
                }
            }
            OrdersEvent::Customer(_) => {}
        }
    }

    fn react(
        &self,
        state: &mut Fulfilment,
        event: &Envelope<OrdersEvent>,
        actions: &mut Actions<FulfilmentCommand>,
    ) -> Result<(), ApplyError> {
        match &event.event {
            OrdersEvent::Order(order) => state.on_order(order, event, self.settings, actions),
            OrdersEvent::Product(product) => state.on_stock(&event.stream.id, product, actions),
            OrdersEvent::Customer(_) => {}
        }
        Ok(())
    }

    fn status(state: &Fulfilment) -> SagaStatus {
        let settled = state.reserved.is_empty();
        match (state.stage, state.cancel_reason.as_deref()) {
            (Stage::Shipped, _) if settled => SagaStatus::Completed,
            (Stage::Cancelled, Some(OUT_OF_STOCK | EXPIRED | TIMEOUT)) if settled => {
                SagaStatus::Failed
            }
            (Stage::Cancelled, _) if settled => SagaStatus::Completed,
            _ => SagaStatus::Active,
        }
    }

    fn command_name(command: &FulfilmentCommand) -> String {
        match command {
            FulfilmentCommand::Reserve { sku, qty } => format!("ReserveStock {sku} x{qty}"),
            FulfilmentCommand::Release { sku } => format!("ReleaseStock {sku}"),
            FulfilmentCommand::ShipReserved { sku } => format!("ShipReserved {sku}"),
            FulfilmentCommand::Complete => "CompleteConfirmation".to_owned(),
            FulfilmentCommand::CancelForShortage { skus } => {
                format!("CancelForShortage {}", skus.join(","))
            }
            FulfilmentCommand::Expire => "Expire".to_owned(),
            FulfilmentCommand::TimeOut { .. } => "TimeOut".to_owned(),
        }
    }

    async fn dispatch(
        &self,
        order_id: &str,
        command: FulfilmentCommand,
        context: &CommandContext,
    ) -> Result<(), DispatchError> {
        let bus = self.bus.as_ref();
        let order = |command| async move {
            bus.execute::<Order>(order_id, command, context).await.map(drop).map_err(undelivered)
        };
        let product = |sku: String, command| async move {
            bus.execute::<Product>(&sku, command, context).await.map(drop).map_err(undelivered)
        };
        let order_id_owned = order_id.to_owned();
        match command {
            FulfilmentCommand::Reserve { sku, qty } => {
                let reserve = ProductCommand::ReserveStock { order_id: order_id_owned, qty };
                match bus.execute::<Product>(&sku, reserve, context).await {
                    Ok(_) => Ok(()),
                    // Under the same key, so that exactly one answer is ever recorded.
                    Err(CommandError::Rejected(_)) => {
                        order(OrderCommand::RecordShortage { sku }).await
                    }
                    Err(error) => Err(undelivered(error)),
                }
            }
            FulfilmentCommand::Release { sku } => {
                product(sku, ProductCommand::ReleaseStock { order_id: order_id_owned }).await
            }
            FulfilmentCommand::ShipReserved { sku } => {
                product(sku, ProductCommand::ShipReserved { order_id: order_id_owned }).await
            }
            FulfilmentCommand::Complete => order(OrderCommand::CompleteConfirmation).await,
            FulfilmentCommand::CancelForShortage { skus } => {
                order(OrderCommand::CancelForShortage { skus }).await
            }
            FulfilmentCommand::Expire => order(OrderCommand::Expire).await,
            FulfilmentCommand::TimeOut { skus } => {
                let timed_out = bus.execute::<Order>(order_id, OrderCommand::TimeOut, context);
                if timed_out.await.map_err(undelivered)?.position.is_none() {
                    // Confirmed or cancelled meanwhile: the saga settles what it holds.
                    return Ok(());
                }
                for sku in skus {
                    let mut release = context.clone();
                    if let Some(claim) = release.idempotency.as_mut() {
                        claim.key = format!("{} release {sku}", claim.key);
                        claim.fingerprint.clone_from(&claim.key);
                    }
                    let command = ProductCommand::ReleaseStock { order_id: order_id_owned.clone() };
                    bus.execute::<Product>(&sku, command, &release).await.map_err(undelivered)?;
                }
                Ok(())
            }
        }
    }

    fn report(state: &Fulfilment) -> serde_json::Map<String, serde_json::Value> {
        let reserved: Vec<serde_json::Value> = state
            .reserved
            .iter()
            .map(|(sku, qty)| serde_json::json!({"sku": sku, "qty": qty}))
            .collect();
        let stage = serde_json::to_value(state.stage).unwrap_or_default();
        let mut report = serde_json::Map::new();
        report.insert("state".to_owned(), stage);
        report.insert("reserved".to_owned(), reserved.into());
        report.insert("cancel_reason".to_owned(), state.cancel_reason.clone().into());
        report
    }
}

/// Locates an event that does not decode: an order's by its stream, a product's by the
/// `order_id` its payload names, if it can be read that far.
fn locate_raw(event: &RecordedEvent, ids: &mut Vec<String>) {
    match event.stream.aggregate_type.as_str() {
        Order::TYPE => ids.push(event.stream.id.clone()),
        Product::TYPE => {
            let payload: Result<serde_json::Value, _> = strata::event::decode_payload(event);
            if let Some(order_id) = payload.ok().as_ref().and_then(|p| p["order_id"].as_str()) {
                ids.push(order_id.to_owned());
            }
        }
        _ => {}
    }
}

/// A refusal the saga cannot turn into an event parks the instance; anything else is the
/// store failing, and the batch is tried again.
fn undelivered<E: std::error::Error>(error: CommandError<E>) -> DispatchError {
    match error {
        CommandError::Rejected(_)
        | CommandError::KeyReused(_)
        | CommandError::Decode(_)
        | CommandError::Encode(_) => DispatchError::Refused(error.to_string()),
        CommandError::PreconditionFailed { .. }
        | CommandError::Conflict { .. }
        | CommandError::KeyBusy(_)
        | CommandError::Store(_) => DispatchError::Unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use strata::{EventMetadata, InMemoryEventStore, Position, StreamId, Version};

    use super::*;
    use crate::domain::order::{LineUnavailable, OrderPlaced, OrderStatusChanged};
    use crate::domain::product::StockMoved;
    use crate::domain::{OrderLine, ProductEvent};

    fn envelope(stream: StreamId, position: u64, event: OrdersEvent) -> Envelope<OrdersEvent> {
        let metadata = EventMetadata::new("test", None);
        Envelope { stream, version: Version(1), position: Position(position), metadata, event }
    }

    fn order(position: u64, event: OrderEvent) -> Envelope<OrdersEvent> {
        envelope(StreamId::new("order", "o1"), position, OrdersEvent::Order(event))
    }

    fn reserved(sku: &str, position: u64) -> Envelope<OrdersEvent> {
        let moved = StockMoved { order_id: "o1".into(), qty: 2 };
        let event = OrdersEvent::Product(ProductEvent::StockReserved(moved));
        envelope(StreamId::new("product", sku), position, event)
    }

    #[test]
    fn a_short_line_gives_back_what_was_reserved_and_then_cancels() {
        let bus = Arc::new(CommandBus::new(
            Arc::new(InMemoryEventStore::new()),
            strata::BusConfig::default(),
        ));
        let saga = FulfilmentSaga::new(bus, FulfilmentSettings::default());
        let mut state = Fulfilment::default();
        let line = |sku: &str| OrderLine { sku: sku.into(), qty: 2, price_cents: 1 };
        let placed = OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "ada".into(),
            lines: vec![line("tea"), line("cake")],
            payment_method: "card".into(),
            shipping_address: None,
        });
        let mut decide = |event: Envelope<OrdersEvent>| {
            let mut actions = Actions::default();
            saga.react(&mut state, &event, &mut actions).unwrap();
            actions
        };
        let actions = decide(order(1, placed));
        assert_eq!(actions.scheduled()[0].0, EXPIRY);

        let asked = OrderEvent::OrderConfirmationRequested(OrderStatusChanged {
            customer_id: "ada".into(),
        });
        let actions = decide(order(2, asked));
        let reserve = |sku: &str| FulfilmentCommand::Reserve { sku: sku.into(), qty: 2 };
        assert_eq!(actions.sent(), [reserve("cake"), reserve("tea")]);
        assert_eq!(actions.cancelled(), [EXPIRY]);
        assert_eq!(actions.scheduled()[0].0, CONFIRMATION);

        assert!(decide(reserved("tea", 3)).sent().is_empty(), "cake has not answered yet");
        let short = OrderEvent::LineUnavailable(LineUnavailable {
            customer_id: "ada".into(),
            sku: "cake".into(),
        });
        let actions = decide(order(4, short));
        assert_eq!(
            actions.sent(),
            [
                FulfilmentCommand::Release { sku: "tea".into() },
                FulfilmentCommand::CancelForShortage { skus: vec!["cake".into()] },
            ]
        );
    }
}

//! A product: created once with a name and a price, restocked any number of times; its
//! stock is reserved by orders being confirmed, released when they are cancelled and taken
//! out when they ship.
//!
//! Reservations are kept per order, so that releasing or shipping an order's reservation
//! is exact and doing it twice changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata::{Aggregate, Decision, Rejection, RejectionKind, SnapshotPolicy};

use super::json_events;

/// The highest price a product may have, in cents; it keeps every total far from overflow.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

/// The most units one restock or one order line may carry.
pub const MAX_QTY: i64 = 1_000_000;

/// A product in the catalogue; snapshotted every 100 events (format 1 is [`ProductSnapshot`]
/// as JSON), since every order confirmed on it adds to its stream.
///
/// The reservations are shared, not copied, between the states the bus hands out (every
/// order line reads its product's price), and copied only when a reservation changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Product {
    /// Whether the product exists.
    pub created: bool,
    /// The current price in cents; order lines copy it when they are added.
    pub price_cents: i64,
    /// Units in stock, reserved or not.
    pub on_hand: i64,
    /// Units reserved, by order.
    reservations: Arc<BTreeMap<String, i64>>,
    /// Units reserved by all orders: the sum of `reservations`.
    reserved: i64,
}

impl Product {
    /// Units reserved, by order.
    pub fn reservations(&self) -> &BTreeMap<String, i64> {
        &self.reservations
    }

    /// Units reserved by all orders.
    pub fn reserved(&self) -> i64 {
        self.reserved
    }

    /// Units that may still be reserved.
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    fn settle(&mut self, order_id: &str) -> i64 {
        let qty = Arc::make_mut(&mut self.reservations).remove(order_id).unwrap_or(0);
        self.reserved = self.reserved.saturating_sub(qty);
        qty
    }
}

/// A product's snapshot, format 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSnapshot {
    created: bool,
    price_cents: i64,
    on_hand: i64,
    reservations: BTreeMap<String, i64>,
}

/// What can be asked of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Adds a product to the catalogue.
    Create {
        /// Display name, not empty.
        name: String,
        /// Price in cents, not negative.
        price_cents: i64,
    },
    /// Adds units to the stock.
    Restock {
        /// Units added, positive.
        qty: i64,
    },
    /// Sets `qty` units aside for an order; refused when fewer are available, nothing when
    /// the order holds a reservation already.
    ReserveStock {
        /// The order.
        order_id: String,
        /// Units, positive.
        qty: i64,
    },
    /// Gives an order's reservation back; nothing when it has none.
    ReleaseStock {
        /// The order.
        order_id: String,
    },
    /// Takes an order's reservation out of the stock, as it ships; nothing when it has none.
    ShipReserved {
        /// The order.
        order_id: String,
    },
}

/// A product was added to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// Units were added to a product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRestocked {
    /// Units added.
    pub qty: i64,
}

/// Units of a product were reserved for, released by, or shipped to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockMoved {
    /// The order.
    pub order_id: String,
    /// Units.
    pub qty: i64,
}

/// What happened to a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEvent {
    /// See [`ProductCreated`].
    ProductCreated(ProductCreated),
    /// See [`ProductRestocked`].
    ProductRestocked(ProductRestocked),
    /// Units were set aside for an order.
    StockReserved(StockMoved),
    /// An order's reservation was given back.
    StockReleased(StockMoved),
    /// An order's reservation left the stock with the order.
    ReservedStockShipped(StockMoved),
}
json_events!(ProductEvent {
    ProductCreated,
    ProductRestocked,
    StockReserved,
    StockReleased,
    ReservedStockShipped
});

impl ProductEvent {
    /// The order a stock event is about.
    pub fn order_id(&self) -> Option<&str> {
        match self {
            ProductEvent::StockReserved(moved)
            | ProductEvent::StockReleased(moved)
            | ProductEvent::ReservedStockShipped(moved) => Some(&moved.order_id),
            ProductEvent::ProductCreated(_) | ProductEvent::ProductRestocked(_) => None,
        }
    }
}

/// Why a product command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// The sku is taken.
    #[error("product already exists")]
    AlreadyExists,
    /// The product does not exist.
    #[error("product does not exist")]
    NotFound,
    /// The name is empty.
    #[error("name must not be empty")]
    EmptyName,
    /// The price is below zero.
    #[error("price_cents must not be negative")]
    NegativePrice,
    /// The quantity is zero or less.
    #[error("qty must be greater than 0")]
    NonPositiveQty,
    /// The price is above [`MAX_PRICE_CENTS`].
    #[error("price_cents must be at most {MAX_PRICE_CENTS}")]
    PriceTooHigh,
    /// The quantity is above [`MAX_QTY`].
    #[error("qty must be at most {MAX_QTY}")]
    QtyTooLarge,
    /// Fewer units are available than a reservation asks for.
    #[error("only {available} available, {requested} requested")]
    OutOfStock {
        /// Units available.
        available: i64,
        /// Units asked for.
        requested: i64,
    },
}

impl Rejection for ProductError {
    fn kind(&self) -> RejectionKind {
        match self {
            ProductError::AlreadyExists | ProductError::OutOfStock { .. } => {
                RejectionKind::Conflict
            }
            ProductError::NotFound => RejectionKind::NotFound,
            ProductError::EmptyName
            | ProductError::NegativePrice
            | ProductError::NonPositiveQty
            | ProductError::PriceTooHigh
            | ProductError::QtyTooLarge => RejectionKind::BrokenRule,
        }
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn command_name(command: &ProductCommand) -> &'static str {
        match command {
            ProductCommand::Create { .. } => "Create",
            ProductCommand::Restock { .. } => "Restock",
            ProductCommand::ReserveStock { .. } => "ReserveStock",
            ProductCommand::ReleaseStock { .. } => "ReleaseStock",
            ProductCommand::ShipReserved { .. } => "ShipReserved",
        }
    }

    const SNAPSHOTS: Option<SnapshotPolicy> = Some(SnapshotPolicy { every: 100, format: 1 });

    fn to_snapshot(&self) -> Option<Vec<u8>> {
        let snapshot = ProductSnapshot {
            created: self.created,
            price_cents: self.price_cents,
            on_hand: self.on_hand,
            reservations: self.reservations.as_ref().clone(),
        };
        serde_json::to_vec(&snapshot).ok()
    }

    fn from_snapshot(state: &[u8]) -> Option<Self> {
        let snapshot: ProductSnapshot = serde_json::from_slice(state).ok()?;
        let reserved = snapshot.reservations.values().fold(0_i64, |sum, q| sum.saturating_add(*q));
        Some(Product {
            created: snapshot.created,
            price_cents: snapshot.price_cents,
            on_hand: snapshot.on_hand,
            reservations: Arc::new(snapshot.reservations),
            reserved,
        })
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductCreated(created) => {
                self.created = true;
                self.price_cents = created.price_cents;
            }
            ProductEvent::ProductRestocked(restocked) => {
                self.on_hand = self.on_hand.saturating_add(restocked.qty);
            }
            ProductEvent::StockReserved(moved) => {
                let reservations = Arc::make_mut(&mut self.reservations);
                let reserved = reservations.entry(moved.order_id.clone()).or_default();
                *reserved = reserved.saturating_add(moved.qty);
                self.reserved = self.reserved.saturating_add(moved.qty);
            }
            ProductEvent::StockReleased(moved) => {
                self.settle(&moved.order_id);
            }
            ProductEvent::ReservedStockShipped(moved) => {
                self.settle(&moved.order_id);
                self.on_hand = self.on_hand.saturating_sub(moved.qty);
            }
        }
    }

    fn handle(d: &mut Decision<'_, Self>, command: ProductCommand) -> Result<(), ProductError> {
        match command {
            ProductCommand::Create { name, price_cents } => {
                if d.created {
                    return Err(ProductError::AlreadyExists);
                }
                if name.trim().is_empty() {
                    return Err(ProductError::EmptyName);
                }
                if price_cents < 0 {
                    return Err(ProductError::NegativePrice);
                }
                if price_cents > MAX_PRICE_CENTS {
                    return Err(ProductError::PriceTooHigh);
                }
                d.emit(ProductEvent::ProductCreated(ProductCreated { name, price_cents }));
            }
            ProductCommand::Restock { qty } => {
                if !d.created {
                    return Err(ProductError::NotFound);
                }
                if qty <= 0 {
                    return Err(ProductError::NonPositiveQty);
                }
                if qty > MAX_QTY {
                    return Err(ProductError::QtyTooLarge);
                }
                d.emit(ProductEvent::ProductRestocked(ProductRestocked { qty }));
            }
            ProductCommand::ReserveStock { order_id, qty } => {
                if !d.created {
                    return Err(ProductError::NotFound);
                }
                if qty <= 0 {
                    return Err(ProductError::NonPositiveQty);
                }
                // An order reserves a product once (its lines of one sku are summed): one
                // sent again, long after its idempotency key expired, holds nothing twice.
                if d.reservations.contains_key(&order_id) {
                    return Ok(());
                }
                let available = d.available();
                if available < qty {
                    return Err(ProductError::OutOfStock { available, requested: qty });
                }
                d.emit(ProductEvent::StockReserved(StockMoved { order_id, qty }));
            }
            ProductCommand::ReleaseStock { order_id } => {
                if let Some(&qty) = d.reservations.get(&order_id) {
                    d.emit(ProductEvent::StockReleased(StockMoved { order_id, qty }));
                }
            }
            ProductCommand::ShipReserved { order_id } => {
                if let Some(&qty) = d.reservations.get(&order_id) {
                    d.emit(ProductEvent::ReservedStockShipped(StockMoved { order_id, qty }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use strata::testing::given;

    use super::*;

    fn created() -> ProductEvent {
        ProductEvent::ProductCreated(ProductCreated { name: "Tea".into(), price_cents: 450 })
    }

    fn create(name: &str, price_cents: i64) -> ProductCommand {
        ProductCommand::Create { name: name.into(), price_cents }
    }

    #[test]
    fn a_product_is_created_once() {
        given::<Product>([]).when(create("Tea", 450)).then([created()]);
        given::<Product>([created()])
            .when(create("Tea", 450))
            .then_error(ProductError::AlreadyExists);
    }

    #[test]
    fn a_product_needs_a_name_and_a_price_of_zero_or_more() {
        given::<Product>([]).when(create("", 1)).then_error(ProductError::EmptyName);
        given::<Product>([]).when(create("Tea", -1)).then_error(ProductError::NegativePrice);
        given::<Product>([]).when(create("Free sample", 0)).then([ProductEvent::ProductCreated(
            ProductCreated { name: "Free sample".into(), price_cents: 0 },
        )]);
    }

    fn moved(order_id: &str, qty: i64) -> StockMoved {
        StockMoved { order_id: order_id.into(), qty }
    }

    fn restocked(qty: i64) -> ProductEvent {
        ProductEvent::ProductRestocked(ProductRestocked { qty })
    }

    fn reserve(order_id: &str, qty: i64) -> ProductCommand {
        ProductCommand::ReserveStock { order_id: order_id.into(), qty }
    }

    #[test]
    fn a_reservation_takes_only_what_is_available() {
        given::<Product>([created(), restocked(5)])
            .when(reserve("o1", 5))
            .then([ProductEvent::StockReserved(moved("o1", 5))]);
        given::<Product>([created(), restocked(5), ProductEvent::StockReserved(moved("o1", 4))])
            .when(reserve("o2", 2))
            .then_error(ProductError::OutOfStock { available: 1, requested: 2 });
        given::<Product>([created(), restocked(5), ProductEvent::StockReserved(moved("o1", 4))])
            .when(reserve("o2", 1))
            .then([ProductEvent::StockReserved(moved("o2", 1))]);
        given::<Product>([]).when(reserve("o1", 1)).then_error(ProductError::NotFound);
        given::<Product>([created(), restocked(5), ProductEvent::StockReserved(moved("o1", 2))])
            .when(reserve("o1", 2))
            .then([]);
    }

    #[test]
    fn releasing_gives_back_and_shipping_takes_out_the_orders_reservation_once() {
        let reserved = [created(), restocked(5), ProductEvent::StockReserved(moved("o1", 3))];
        given::<Product>(reserved.clone())
            .when(ProductCommand::ReleaseStock { order_id: "o1".into() })
            .then([ProductEvent::StockReleased(moved("o1", 3))]);
        given::<Product>(reserved.clone())
            .when(ProductCommand::ShipReserved { order_id: "o1".into() })
            .then([ProductEvent::ReservedStockShipped(moved("o1", 3))]);
        let mut released = reserved.to_vec();
        released.push(ProductEvent::StockReleased(moved("o1", 3)));
        given::<Product>(released.clone())
            .when(ProductCommand::ReleaseStock { order_id: "o1".into() })
            .then([]);
        let shipped = strata::aggregate::replay::<Product>(&[
            created(),
            restocked(5),
            ProductEvent::StockReserved(moved("o1", 3)),
            ProductEvent::ReservedStockShipped(moved("o1", 3)),
        ]);
        assert_eq!((shipped.on_hand, shipped.reserved(), shipped.available()), (2, 0, 2));
        let after_release = strata::aggregate::replay::<Product>(&released);
        assert_eq!((after_release.on_hand, after_release.available()), (5, 5));
    }

    #[test]
    fn a_snapshot_gives_back_the_same_product() {
        let product = strata::aggregate::replay::<Product>(&[
            created(),
            restocked(9),
            ProductEvent::StockReserved(moved("o1", 3)),
            ProductEvent::StockReserved(moved("o2", 4)),
            ProductEvent::StockReleased(moved("o1", 3)),
        ]);
        let snapshot = product.to_snapshot().unwrap();
        let restored = Product::from_snapshot(&snapshot).unwrap();
        assert_eq!(restored, product);
        assert_eq!((restored.reserved(), restored.available()), (4, 5));
    }

    #[test]
    fn restocking_adds_a_positive_quantity_to_an_existing_product() {
        given::<Product>([created()])
            .when(ProductCommand::Restock { qty: 5 })
            .then([ProductEvent::ProductRestocked(ProductRestocked { qty: 5 })]);
        given::<Product>([created()])
            .when(ProductCommand::Restock { qty: 0 })
            .then_error(ProductError::NonPositiveQty);
        given::<Product>([])
            .when(ProductCommand::Restock { qty: 5 })
            .then_error(ProductError::NotFound);
    }
}

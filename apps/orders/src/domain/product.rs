//! A product: created once with a name and a price, restocked any number of times.

use serde::{Deserialize, Serialize};
use strata::{Aggregate, Decision, Rejection, RejectionKind};

use super::json_events;

/// The highest price a product may have, in cents; it keeps every total far from overflow.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

/// The most units one restock or one order line may carry.
pub const MAX_QTY: i64 = 1_000_000;

/// A product in the catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Product {
    /// Whether the product exists.
    pub created: bool,
    /// The current price in cents; order lines copy it when they are added.
    pub price_cents: i64,
    /// Units in stock.
    pub on_hand: i64,
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

/// What happened to a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEvent {
    /// See [`ProductCreated`].
    ProductCreated(ProductCreated),
    /// See [`ProductRestocked`].
    ProductRestocked(ProductRestocked),
}
json_events!(ProductEvent { ProductCreated, ProductRestocked });

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
}

impl Rejection for ProductError {
    fn kind(&self) -> RejectionKind {
        match self {
            ProductError::AlreadyExists => RejectionKind::Conflict,
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
        }
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

//! `GET /products/{sku}`: one document per product, with its stock.

use serde::{Deserialize, Serialize};
use strata::{ApplyError, Envelope, Projection, View};

use super::{Locator, OrdersProjection, product_stream};
use crate::domain::{OrdersEvent, ProductEvent};

/// A product as queries show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductView {
    /// The product's sku.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Current price in cents.
    pub price_cents: i64,
    /// Units in stock, reserved or not.
    pub on_hand: i64,
    /// Units reserved by orders being confirmed or waiting to ship.
    pub reserved: i64,
    /// Units that may still be reserved: `on_hand - reserved`.
    pub available: i64,
}

impl View<OrdersEvent> for ProductView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) -> Result<(), ApplyError> {
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
            OrdersEvent::Product(ProductEvent::StockReserved(moved)) => {
                self.reserved = self.reserved.saturating_add(moved.qty);
            }
            OrdersEvent::Product(ProductEvent::StockReleased(moved)) => {
                self.reserved = self.reserved.saturating_sub(moved.qty);
            }
            OrdersEvent::Product(ProductEvent::ReservedStockShipped(moved)) => {
                self.reserved = self.reserved.saturating_sub(moved.qty);
                self.on_hand = self.on_hand.saturating_sub(moved.qty);
            }
            _ => {}
        }
        self.available = self.on_hand.saturating_sub(self.reserved);
        Ok(())
    }
}

fn locate_product(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Product(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

/// The products projection. Version 2: reserved and available stock.
pub fn products() -> OrdersProjection<ProductView> {
    Projection::new("products", locate_product as Locator)
        .with_version(2)
        .with_raw_locator(product_stream)
}

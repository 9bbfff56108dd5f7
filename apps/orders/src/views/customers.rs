//! `GET /customers/{id}`: one document per customer.

use serde::{Deserialize, Serialize};
use strata::{ApplyError, Envelope, Projection, View};

use super::{Locator, OrdersProjection, customer_stream};
use crate::domain::{CustomerEvent, OrdersEvent};

/// A customer as queries show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The customer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
}

impl View<OrdersEvent> for CustomerView {
    fn apply(&mut self, event: &Envelope<OrdersEvent>) -> Result<(), ApplyError> {
        if let OrdersEvent::Customer(CustomerEvent::CustomerRegistered(registered)) = &event.event {
            self.id = event.stream.id.clone();
            self.name = registered.name.clone();
            self.email = registered.email.clone();
        }
        Ok(())
    }
}

fn locate_customer(event: &Envelope<OrdersEvent>, ids: &mut Vec<String>) {
    if let OrdersEvent::Customer(_) = event.event {
        ids.push(event.stream.id.clone());
    }
}

/// The customers projection.
pub fn customers() -> OrdersProjection<CustomerView> {
    Projection::new("customers", locate_customer as Locator).with_raw_locator(customer_stream)
}

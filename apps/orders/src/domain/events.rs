//! [`OrdersEvent`]: every event of the service, for views that read several aggregates.

use strata::{DecodeError, DomainEvent, RecordedEvent};

use super::{Customer, CustomerEvent, Order, OrderEvent, Product, ProductEvent};
use strata::Aggregate;

/// An event of any aggregate of the orders service, told apart by the stream's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrdersEvent {
    /// An event of a customer stream.
    Customer(CustomerEvent),
    /// An event of a product stream.
    Product(ProductEvent),
    /// An event of an order stream.
    Order(OrderEvent),
}

impl DomainEvent for OrdersEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrdersEvent::Customer(e) => e.event_type(),
            OrdersEvent::Product(e) => e.event_type(),
            OrdersEvent::Order(e) => e.event_type(),
        }
    }

    fn schemas() -> &'static strata::EventSchemas {
        &super::SCHEMAS
    }

    fn encode(&self, codec: strata::Codec) -> Result<Vec<u8>, strata::CodecError> {
        match self {
            OrdersEvent::Customer(e) => e.encode(codec),
            OrdersEvent::Product(e) => e.encode(codec),
            OrdersEvent::Order(e) => e.encode(codec),
        }
    }

    fn decode(record: &RecordedEvent) -> Result<Self, DecodeError> {
        match record.stream.aggregate_type.as_str() {
            Customer::TYPE => CustomerEvent::decode(record).map(OrdersEvent::Customer),
            Product::TYPE => ProductEvent::decode(record).map(OrdersEvent::Product),
            Order::TYPE => OrderEvent::decode(record).map(OrdersEvent::Order),
            _ => Err(strata::event::unknown_type(record)),
        }
    }
}

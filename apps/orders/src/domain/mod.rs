//! The orders domain: customers, products with stock, and orders. Pure: every aggregate
//! decides synchronously on its own state; reading other aggregates (a product's price) is
//! the application's job in [`crate::app`].

pub mod customer;
pub mod events;
pub mod order;
pub mod product;
pub mod schemas;

pub use customer::{Customer, CustomerCommand, CustomerError, CustomerEvent};
pub use events::OrdersEvent;
pub use order::{Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderStatus};
pub use product::{Product, ProductCommand, ProductError, ProductEvent};
pub use schemas::SCHEMAS;

/// Implements [`strata::DomainEvent`] for an enum whose variants each wrap one payload
/// struct, storing the variant name as the event type and the struct as JSON, at the schema
/// version [`SCHEMAS`] gives it, and reading older versions through its upcasters.
macro_rules! json_events {
    ($enum:ident { $($variant:ident),+ $(,)? }) => {
        impl strata::DomainEvent for $enum {
            fn event_type(&self) -> &'static str {
                match self { $($enum::$variant(_) => stringify!($variant),)+ }
            }

            fn schemas() -> &'static strata::EventSchemas {
                &$crate::domain::SCHEMAS
            }

            fn encode(&self, codec: strata::Codec) -> Result<Vec<u8>, strata::CodecError> {
                match self { $($enum::$variant(payload) => codec.encode(payload),)+ }
            }

            fn decode(record: &strata::RecordedEvent) -> Result<Self, strata::DecodeError> {
                match record.event_type.as_str() {
                    $(stringify!($variant) => Ok($enum::$variant(Self::schemas().decode(record)?)),)+
                    _ => Err(strata::event::unknown_type(record)),
                }
            }
        }
    };
}
pub(crate) use json_events;

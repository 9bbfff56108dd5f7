//! Every event type the orders service has ever written, the schema version it writes now,
//! and how older versions are read. Adding a version: raise it here, add the upcaster from
//! the previous one, and add a golden file of the new version under `tests/golden/` (the
//! golden test proves that every version ever written still loads).

use serde_json::Value;
use strata::{EventSchemas, Upcaster};

/// The orders domain's event schemas.
pub static SCHEMAS: EventSchemas = EventSchemas {
    types: &[
        ("CustomerRegistered", 1),
        ("ProductCreated", 1),
        ("ProductRestocked", 1),
        ("StockReserved", 1),
        ("StockReleased", 1),
        ("ReservedStockShipped", 1),
        ("OrderPlaced", 2),
        ("LineAdded", 1),
        ("OrderConfirmationRequested", 1),
        ("LineUnavailable", 1),
        ("OrderConfirmed", 1),
        ("OrderShipped", 1),
        ("OrderCancelled", 1),
    ],
    upcasters: &[Upcaster { event_type: "OrderPlaced", from: 1, upcast: order_placed_v1_to_v2 }],
};

/// `OrderPlaced` version 1 had neither a payment method nor a shipping address (later
/// version 1 payloads may carry either, as optional fields); version 2 always has both: a
/// payment method (`"unknown"` when none was given) and an address or null.
fn order_placed_v1_to_v2(value: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = value else {
        return Err("the payload is not a JSON object".to_owned());
    };
    if fields.get("payment_method").is_none_or(Value::is_null) {
        fields.insert("payment_method".to_owned(), Value::from(UNKNOWN_PAYMENT_METHOD));
    }
    fields.entry("shipping_address").or_insert(Value::Null);
    Ok(Value::Object(fields))
}

/// The payment method of an order placed without one.
pub const UNKNOWN_PAYMENT_METHOD: &str = "unknown";

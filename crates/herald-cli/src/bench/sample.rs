//! The event every store benchmark appends: a small order, keyed by
//! customer, as a service would publish it.

use std::sync::Arc;

use herald::{Envelope, Message, Publish, Result};

/// The payload and key, built once.
pub fn sample() -> Result<Envelope> {
    Message::json(
        "bench.orders",
        &serde_json::json!({"id": 1234, "sku": "A-1", "qty": 2, "total": 99.5}),
    )?
    .key("customer-42")
    .into_envelope(&Arc::from("bench"))
}

/// A new event (new id) with the sample's payload and key.
pub fn fresh(sample: &Envelope) -> Envelope {
    Message::new("bench.orders", sample.payload().clone())
        .key("customer-42")
        .into_envelope(&Arc::from("bench"))
        .expect("a valid sample")
}

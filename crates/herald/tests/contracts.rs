//! `HERALD_SCHEMAS` on a bus (a setting of the bus, not its store, so not
//! a conformance scenario: the conformance suite's `contracts` runs the
//! registry on every store).

use herald::config::DeliveryConfig;
use herald::contract::SchemaChecks;
use herald::memory::{MemoryConfig, MemoryTransport};
use herald::{Bus, Config, Message};
use serde_json::json;

fn order(total: serde_json::Value) -> Message {
    Message::json("orders.placed", &json!({"total": total})).unwrap()
}

fn bus_with(checks: SchemaChecks) -> Bus {
    let delivery = DeliveryConfig::default().schemas(checks);
    let transport =
        MemoryTransport::new(MemoryConfig::default().delivery(delivery.clone())).unwrap();
    Bus::builder()
        .config(Config::default().delivery(delivery))
        .transport(transport)
        .build()
        .unwrap()
}

#[tokio::test]
async fn warn_publishes_what_enforce_refuses_and_off_checks_nothing() {
    for (checks, allowed) in [
        (SchemaChecks::Enforce, false),
        (SchemaChecks::Warn, true),
        (SchemaChecks::Off, true),
    ] {
        let bus = bus_with(checks);
        let schema = json!({"type": "object", "properties": {"total": {"type": "integer"}}});
        bus.schemas()
            .register("orders.placed", schema)
            .await
            .unwrap();
        let published = bus.publish(order(json!("seven"))).await;
        assert_eq!(published.is_ok(), allowed, "{checks:?}: {published:?}");
    }
}

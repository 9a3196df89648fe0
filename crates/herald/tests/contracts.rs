//! `HERALD_SCHEMAS` on a bus, and the forwarder's path through the
//! target's checks (settings and paths of the bus, not its store, so not
//! conformance scenarios: the conformance suite's `contracts` runs the
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

/// The forwarder's path is checked too: an event the target's subject
/// refuses is dead-lettered in the source (`VALIDATION`, with its pointer,
/// source `forwarder`), never forwarded, and the rest go on.
#[tokio::test]
async fn a_forwarded_event_that_breaks_the_targets_schema_is_dead_lettered_at_the_source() {
    let (source, target) = (Bus::memory(), Bus::memory());
    let schema = json!({"type": "object", "properties": {"total": {"type": "integer"}}});
    target
        .schemas()
        .register("orders.placed", schema)
        .await
        .unwrap();
    let forwarding = herald::forward::Forwarder::new(&source, &target)
        .topics("orders.>")
        .run()
        .await
        .unwrap();
    source.publish(order(json!("seven"))).await.unwrap();
    source.publish(order(json!(7))).await.unwrap();
    let mut dead = Vec::new();
    while dead.is_empty() || target.last_seq("orders.placed").await.unwrap() != Some(1) {
        tokio::task::yield_now().await;
        dead = source.dead_letters().await.unwrap();
    }
    forwarding.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].code, herald::ErrorCode::Validation);
    assert_eq!(dead[0].source, herald::FailureSource::Forwarder);
    assert!(dead[0].reason.contains("/total"), "{}", dead[0].reason);
    assert_eq!(dead[0].envelope.seq(), Some(1));
    let forwarded = target
        .replay("orders.placed", herald::StartPosition::Earliest, 10)
        .await
        .unwrap();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0].decode::<serde_json::Value>().unwrap()["total"],
        7
    );
}

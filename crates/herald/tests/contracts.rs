//! Contracts on a bus: registering versions, checking every publish path
//! of the library against them as `HERALD_SCHEMAS` says, and
//! registrations racing on one subject.

use std::time::Duration;

use futures_util::StreamExt;
use herald::config::DeliveryConfig;
use herald::contract::{Compatibility, SchemaChecks};
use herald::memory::{MemoryConfig, MemoryTransport};
use herald::{Bus, Config, ErrorCode, Message, StartPosition};
use serde_json::json;

fn order_v1() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "total"],
        "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}
    })
}

fn order(id: &str, total: serde_json::Value) -> Message {
    Message::json("orders.placed", &json!({"id": id, "total": total})).unwrap()
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
async fn three_versions_evolve_under_backward_and_every_publish_is_checked() {
    let bus = Bus::memory();
    let schemas = bus.schemas();
    let v1 = schemas
        .register("orders.*", order_v1())
        .owner("billing")
        .description("orders as placed")
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    // The same schema again: the same version, nothing added.
    assert_eq!(
        schemas
            .register("orders.*", order_v1())
            .await
            .unwrap()
            .version,
        1
    );
    // v2 adds an optional field: consumers of v1 still decode it.
    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string"});
    assert_eq!(
        schemas
            .register("orders.*", v2.clone())
            .await
            .unwrap()
            .version,
        2
    );
    // v3 drops the required `total`: refused under backward, with why.
    let mut v3 = v2.clone();
    v3["required"] = json!(["id"]);
    v3["properties"].as_object_mut().unwrap().remove("total");
    let breaking = schemas.check("orders.*", &v3, None).await.unwrap();
    assert!(!breaking.is_empty());
    let refused = schemas.register("orders.*", v3.clone()).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Validation);
    assert!(refused.to_string().contains("`total`"), "{refused}");
    let subject = schemas.get("orders.*").await.unwrap();
    assert_eq!(
        subject.versions.len(),
        2,
        "the refused version was not stored"
    );
    assert_eq!(subject.owner.as_deref(), Some("billing"));
    assert_eq!(subject.compatibility, Compatibility::Backward);
    assert!(schemas
        .check("orders.*", &v3, Some(Compatibility::None))
        .await
        .unwrap()
        .is_empty());

    // Publishing: a payload that fits goes, one that does not is refused
    // with the pointer of its first error, and nothing of its batch is
    // appended.
    let mut tail = bus
        .subscribe_raw("orders.>")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    bus.publish(order("o-1", json!(5))).await.unwrap();
    let refused = bus
        .publish([order("o-2", json!(6)), order("o-3", json!("six"))])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Validation);
    assert!(refused.to_string().contains("/total"), "{refused}");
    // A version the payload names: v1 has no `note`, but allows it.
    let named = order("o-4", json!(7)).schema_version("1");
    bus.publish(named).await.unwrap();
    let unknown = bus
        .publish(order("o-5", json!(7)).schema_version("9"))
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no schema version 9"),
        "{unknown}"
    );
    // Topics no subject covers are not checked.
    bus.publish(Message::json("payments.made", &"anything").unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tail.next().await.unwrap().unwrap();
        got.push(d.seq().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(got, [1, 2], "the refused batch appended nothing");

    // A handler's effects are checked too: a bad one fails the call.
    let handler = bus
        .handler("payments.made")
        .group("effects")
        .start(StartPosition::Earliest)
        .max_deliver(1)
        .redeliver_at_once()
        .run(|_| async { Ok(order("o-6", json!("bad"))) })
        .await
        .unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let dead = bus.dead_letters().group("effects").await.unwrap();
            if !dead.is_empty() {
                break dead;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the call whose effect its schema refuses is dead-lettered");
    assert_eq!(dead[0].code, ErrorCode::Validation, "{:?}", dead[0].reason);
    handler.shutdown(Duration::from_secs(5)).await;

    schemas.delete("orders.*").await.unwrap();
    bus.publish(order("o-7", json!("no contract now")))
        .await
        .unwrap();
    assert_eq!(
        schemas.delete("orders.*").await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn warn_publishes_what_enforce_refuses_and_off_checks_nothing() {
    for (checks, allowed) in [
        (SchemaChecks::Enforce, false),
        (SchemaChecks::Warn, true),
        (SchemaChecks::Off, true),
    ] {
        let bus = bus_with(checks);
        bus.schemas()
            .register("orders.placed", order_v1())
            .await
            .unwrap();
        let published = bus.publish(order("o-1", json!("seven"))).await;
        assert_eq!(published.is_ok(), allowed, "{checks:?}: {published:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_of_one_subject_end_gap_free_and_lose_none() {
    let bus = Bus::memory();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let schemas = bus.schemas();
        tasks.push(tokio::spawn(async move {
            let schema =
                json!({"type": "object", "properties": {format!("f{i}"): {"type": "string"}}});
            schemas
                .register("jobs.*", schema)
                .compatibility(Compatibility::None)
                .await
                .unwrap()
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let subject = bus.schemas().get("jobs.*").await.unwrap();
    let numbers: Vec<u32> = subject.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_registrations_are_refused_and_leave_the_registry_as_it_was() {
    let bus = Bus::memory();
    let schemas = bus.schemas();
    schemas.register("orders.placed", order_v1()).await.unwrap();
    let huge =
        json!({"type": "object", "description": "x".repeat(herald::contract::MAX_SCHEMA_BYTES)});
    for (pattern, schema, why) in [
        (
            "orders.placed",
            json!({"type": "nonsense"}),
            "not a valid JSON Schema",
        ),
        (
            "orders.*",
            json!({"type": "object"}),
            "overlaps another subject",
        ),
        ("orders.placed", huge, "oversize"),
        ("Not A Pattern", json!({}), "a bad subject"),
    ] {
        let e = schemas.register(pattern, schema).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation, "{why}: {e}");
    }
    assert_eq!(
        schemas
            .version("orders.placed", 2)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
    let all = schemas.list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].versions.len(), 1);
}

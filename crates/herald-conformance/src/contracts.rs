//! Contracts (DESIGN.md §11) on every store that keeps them
//! (`Features::contracts`): versions evolve by the subject's mode, every
//! publish of the library is checked against them, bad
//! registrations change nothing, and registrations racing on one subject —
//! from two processes where the store is durable — end gap-free, kept
//! across a restart.

use std::time::Duration;

use futures_util::StreamExt;
use herald::contract::{Compatibility, MAX_SCHEMA_BYTES};
use herald::{Bus, ErrorCode, Event, EventSchema, Message, StartPosition};
use serde_json::json;

use crate::support::DELIVERY_WAIT;
use crate::Harness;

fn keeps_contracts(bus: &Bus, scenario: &str) -> bool {
    Harness::requires(bus, scenario, |f| f.contracts, "contracts")
}

/// One event type as three services wrote it, one version each.
mod shop {
    use super::{Event, EventSchema};

    pub mod v1 {
        use super::*;
        #[derive(Event, EventSchema, Debug)]
        #[event(prefix = "conf.shop.order")]
        pub enum OrderEvent {
            Placed { id: String, total: u64 },
        }
    }

    /// v1 with an optional field.
    pub mod v2 {
        use super::*;
        #[derive(Event, EventSchema, Debug)]
        #[event(prefix = "conf.shop.order")]
        pub enum OrderEvent {
            Placed {
                id: String,
                total: u64,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                note: Option<String>,
            },
        }
    }

    /// v2 without its required `total`.
    pub mod v3 {
        use super::*;
        #[derive(Event, EventSchema, Debug)]
        #[event(prefix = "conf.shop.order")]
        pub enum OrderEvent {
            Placed { id: String, note: Option<String> },
        }
    }
}

/// A Rust type walks its topic through three versions
/// (`#[derive(EventSchema)]`, `Schemas::register_event`): an added optional
/// field passes, a removed required one is refused under `backward` with
/// its name, and once a version without it is forced in (`none`), a
/// consumer decoding into a type that needs it fails at start while one
/// that does not subscribes and reads.
pub async fn a_rust_type_evolves_and_its_consumers_check_at_start(h: &Harness) {
    let bus = h.bus().await;
    if !keeps_contracts(&bus, "contracts: a Rust type evolves") {
        return;
    }
    let schemas = bus.schemas();
    let v1 = schemas
        .register_event::<shop::v1::OrderEvent>()
        .owner("shop");
    assert_eq!(v1.await.unwrap()[0].version, 1);
    let again = schemas.register_event::<shop::v1::OrderEvent>().await;
    assert_eq!(again.unwrap()[0].version, 1, "the same type again");
    let v2 = schemas.register_event::<shop::v2::OrderEvent>().await;
    assert_eq!(v2.unwrap()[0].version, 2, "an optional field passes");
    let refused = schemas
        .register_event::<shop::v3::OrderEvent>()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Validation);
    assert!(refused.to_string().contains("`total`"), "{refused}");
    let subject = schemas.get("conf.shop.order.placed").await.unwrap();
    assert_eq!(
        subject.versions.len(),
        2,
        "the refused version was not stored"
    );
    assert_eq!(subject.owner.as_deref(), Some("shop"));
    for consumer in [
        schemas.check_event::<shop::v1::OrderEvent>().await,
        schemas.check_event::<shop::v2::OrderEvent>().await,
        schemas.check_event::<shop::v3::OrderEvent>().await,
    ] {
        consumer.expect("every consumer reads versions 1 and 2");
    }

    let forced = schemas
        .register_event::<shop::v3::OrderEvent>()
        .compatibility(Compatibility::None)
        .await;
    assert_eq!(forced.unwrap()[0].version, 3);
    let stale = bus
        .subscribe::<shop::v1::OrderEvent>()
        .ephemeral()
        .check_schema()
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(stale.code(), ErrorCode::Validation);
    assert!(
        stale.to_string().contains("`total`") && stale.to_string().contains("version 3"),
        "{stale}"
    );
    let mut reader = bus
        .subscribe::<shop::v3::OrderEvent>()
        .ephemeral()
        .start(StartPosition::Earliest)
        .check_schema()
        .await
        .unwrap();
    bus.publish(shop::v3::OrderEvent::Placed {
        id: "o-1".into(),
        note: None,
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(DELIVERY_WAIT, reader.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    assert!(matches!(&*got, shop::v3::OrderEvent::Placed { id, .. } if id == "o-1"));
}

fn order_v1() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "total"],
        "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}
    })
}

fn order(id: &str, total: serde_json::Value) -> Message {
    Message::json("conf.orders.placed", &json!({"id": id, "total": total})).unwrap()
}

/// Three versions under `backward`: the same schema again is its version,
/// an optional field passes, a removed required field is refused with its
/// name; publishes are checked against the version they name (default the
/// latest), a refused batch appends nothing, topics no subject covers are
/// not checked, a handler's effects are checked too, and a deleted subject
/// checks nothing.
pub async fn versions_evolve_by_their_mode_and_every_publish_is_checked(h: &Harness) {
    let bus = h.bus().await;
    if !keeps_contracts(&bus, "contracts: versions evolve") {
        return;
    }
    let schemas = bus.schemas();
    let v1 = schemas
        .register("conf.orders.*", order_v1())
        .owner("billing")
        .description("orders as placed")
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let again = schemas.register("conf.orders.*", order_v1()).await.unwrap();
    assert_eq!(again.version, 1, "the same schema again is its version");
    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string"});
    assert_eq!(
        schemas
            .register("conf.orders.*", v2.clone())
            .await
            .unwrap()
            .version,
        2
    );
    let mut v3 = v2.clone();
    v3["required"] = json!(["id"]);
    v3["properties"].as_object_mut().unwrap().remove("total");
    assert!(!schemas
        .check("conf.orders.*", &v3, None)
        .await
        .unwrap()
        .is_empty());
    let refused = schemas
        .register("conf.orders.*", v3.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Validation);
    assert!(refused.to_string().contains("`total`"), "{refused}");
    let subject = schemas.get("conf.orders.*").await.unwrap();
    assert_eq!(
        subject.versions.len(),
        2,
        "the refused version was not stored"
    );
    assert_eq!(subject.owner.as_deref(), Some("billing"));
    assert_eq!(subject.description.as_deref(), Some("orders as placed"));
    assert_eq!(subject.compatibility, Compatibility::Backward);
    assert_eq!(
        schemas.version("conf.orders.*", 2).await.unwrap().schema,
        v2
    );
    let none = schemas.check("conf.orders.*", &v3, Some(Compatibility::None));
    assert!(none.await.unwrap().is_empty());

    let mut tail = bus
        .subscribe_raw("conf.orders.>")
        .ephemeral()
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
    bus.publish(order("o-4", json!(7)).schema_version("1"))
        .await
        .unwrap();
    let unknown = bus
        .publish(order("o-5", json!(7)).schema_version("9"))
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no schema version 9"),
        "{unknown}"
    );
    bus.publish(Message::json("conf.payments.made", &"anything").unwrap())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(DELIVERY_WAIT, tail.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        ids.push(d.decode::<serde_json::Value>().unwrap()["id"].clone());
        d.ack().await.unwrap();
    }
    assert_eq!(
        ids,
        [json!("o-1"), json!("o-4")],
        "the refused batch appended nothing"
    );

    let handler = bus
        .handler("conf.payments.made")
        .group("effects")
        .start(StartPosition::Earliest)
        .max_deliver(1)
        .redeliver_at_once()
        .run(|_| async { Ok(order("o-6", json!("bad"))) })
        .await
        .unwrap();
    let dead = tokio::time::timeout(DELIVERY_WAIT, async {
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
    handler.shutdown(Duration::from_secs(10)).await;

    schemas.delete("conf.orders.*").await.unwrap();
    bus.publish(order("o-7", json!("no contract now")))
        .await
        .unwrap();
    let gone = schemas.delete("conf.orders.*").await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
}

/// Bad registrations — not a JSON Schema, overlapping another subject, over
/// the size bound, a bad subject — are `VALIDATION` and change nothing; a
/// version that does not exist is `NOT_FOUND`.
pub async fn bad_registrations_change_nothing(h: &Harness) {
    let bus = h.bus().await;
    if !keeps_contracts(&bus, "contracts: bad registrations") {
        return;
    }
    let schemas = bus.schemas();
    schemas
        .register("conf.orders.placed", order_v1())
        .await
        .unwrap();
    let huge = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)});
    for (pattern, schema, why) in [
        (
            "conf.orders.placed",
            json!({"type": "nonsense"}),
            "not a JSON Schema",
        ),
        (
            "conf.orders.*",
            json!({"type": "object"}),
            "overlaps another subject",
        ),
        ("conf.orders.placed", huge, "oversize"),
        ("Not A Pattern", json!({}), "a bad subject"),
    ] {
        let e = schemas.register(pattern, schema).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation, "{why}: {e}");
    }
    let missing = schemas.version("conf.orders.placed", 2).await.unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);
    let all = schemas.list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].versions.len(), 1);
}

/// Eight registrations of one subject at once — from two processes where
/// the store can reopen its storage — end with versions 1–8, none lost, and
/// a restart keeps them.
pub async fn racing_registrations_end_gap_free_and_survive_a_restart(h: &Harness) {
    let restart = h.restartable("contracts: racing registrations").await;
    let (a, b) = match &restart {
        Some(r) => (r.bus.clone(), r.reopen().await),
        None => {
            let bus = h.bus().await;
            (bus.clone(), bus)
        }
    };
    if !keeps_contracts(&a, "contracts: racing registrations") {
        return;
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        let schemas = if i % 2 == 0 { a.schemas() } else { b.schemas() };
        tasks.push(tokio::spawn(async move {
            let schema =
                json!({"type": "object", "properties": {format!("f{i}"): {"type": "string"}}});
            let registered = schemas
                .register("conf.jobs.*", schema)
                .compatibility(Compatibility::None)
                .await;
            registered.unwrap().version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let numbers = |s: herald::contract::Subject| -> Vec<u32> {
        s.versions.iter().map(|v| v.version).collect()
    };
    let listed = b.schemas().get("conf.jobs.*").await.unwrap();
    assert_eq!(numbers(listed), (1..=8).collect::<Vec<_>>());
    if let Some(r) = restart {
        b.close().await.unwrap();
        let reopened = r.crash_and_reopen().await;
        let kept = reopened.schemas().get("conf.jobs.*").await.unwrap();
        assert_eq!(
            numbers(kept),
            (1..=8).collect::<Vec<_>>(),
            "kept across a restart"
        );
        // The reopened store checks publishes against what it kept.
        let bad = Message::json("conf.jobs.run", &"not an object").unwrap();
        let refused = reopened.publish(bad).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Validation);
    }
}

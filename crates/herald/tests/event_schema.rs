//! What `#[derive(EventSchema)]` describes: each topic's payload exactly as
//! `#[derive(Event)]` encodes and decodes it — serde attributes, tuple and
//! unit variants, nested types inlined — so every event the type publishes
//! passes its own registered schema and a payload of the wrong shape does
//! not.

use herald::{Bus, ErrorCode, Event, EventSchema, Message};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Event, EventSchema, Debug, Clone, PartialEq)]
#[event(prefix = "shop.cart")]
enum CartEvent {
    Filled {
        #[serde(rename = "cartId")]
        id: String,
        lines: Vec<Line>,
        #[serde(default)]
        coupon: Option<String>,
        #[schemars(range(max = 100))]
        discount: u8,
    },
    Tagged(String),
    Moved(u32, u32),
    Emptied,
}

fn filled() -> CartEvent {
    CartEvent::Filled {
        id: "c-1".into(),
        lines: vec![Line {
            sku: "tea".into(),
            qty: 2,
        }],
        coupon: None,
        discount: 10,
    }
}

#[test]
fn each_variant_is_described_as_it_is_encoded() {
    let schemas = CartEvent::schemas();
    let topics: Vec<&str> = schemas.iter().map(|(t, _)| *t).collect();
    assert_eq!(topics, CartEvent::TOPICS);
    let filled = &schemas[0].1;
    assert_eq!(filled["title"], "CartEvent::Filled");
    let required = filled["required"].as_array().unwrap();
    assert!(required.contains(&json!("cartId")), "renamed: {filled}");
    assert!(!required.contains(&json!("coupon")), "defaulted: {filled}");
    assert_eq!(filled["properties"]["discount"]["maximum"], 100);
    assert_eq!(
        filled["properties"]["lines"]["items"]["properties"]["qty"]["type"], "integer",
        "nested types are inlined: {filled}"
    );
    assert!(!filled.to_string().contains("$ref"), "{filled}");
    assert_eq!(schemas[1].1["type"], "string");
    assert_eq!(schemas[2].1["type"], "array");
    assert_eq!(schemas[3].1["type"], "null");
}

#[tokio::test]
async fn what_the_type_publishes_passes_its_schema_and_other_shapes_do_not() {
    let bus = Bus::memory();
    let versions = bus.schemas().register_event::<CartEvent>().await.unwrap();
    assert_eq!(versions.len(), 4);
    bus.publish([
        filled(),
        CartEvent::Tagged("gift".into()),
        CartEvent::Moved(1, 2),
        CartEvent::Emptied,
    ])
    .await
    .unwrap();
    for (topic, payload, pointer) in [
        (
            "shop.cart.filled",
            json!({"id": "c-1", "lines": [], "discount": 1}),
            "",
        ),
        (
            "shop.cart.filled",
            json!({"cartId": "c-1", "lines": [], "discount": 101}),
            "/discount",
        ),
        ("shop.cart.tagged", json!(7), ""),
        ("shop.cart.emptied", json!({}), ""),
    ] {
        let refused = bus
            .publish(Message::json(topic, &payload).unwrap())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Validation, "{payload}");
        if !pointer.is_empty() {
            assert!(refused.to_string().contains(pointer), "{refused}");
        }
    }
}

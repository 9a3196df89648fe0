//! `#[derive(Event)]`: topics, payload shapes and serde attributes.

use herald::{Envelope, Event, Message, Payload, Publish};
use serde_json::json;

mod as_text {
    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Created {
        id: u64,
        name: String,
    },
    #[event(name = "removed")]
    Deleted {
        id: u64,
    },
    SignedUp {
        #[serde(rename = "userId")]
        user_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        referrer: Option<String>,
        #[serde(with = "as_text")]
        big: u64,
    },
    Renamed(String),
    Moved(u32, u32),
    #[event(topic = "audit.user_ping")]
    Ping,
}

#[derive(Event, Debug, PartialEq)]
#[event(prefix = "billing.v2")]
enum Invoice {
    Paid { amount: u64 },
}

#[derive(Event, Debug, PartialEq)]
enum HTTPRequestEvent {
    Received,
}

fn envelope(msg: Message) -> Envelope {
    msg.into_envelope(&std::sync::Arc::from("test")).unwrap()
}

fn round_trip<E: Event + Clone + PartialEq + std::fmt::Debug>(e: &E) -> serde_json::Value {
    let env = envelope(e.to_message().unwrap());
    assert_eq!(env.topic().as_str(), e.topic());
    assert_eq!(&E::from_envelope(&env).unwrap(), e);
    env.decode().unwrap()
}

#[test]
fn variants_map_to_dot_notation_topics() {
    assert_eq!(
        UserEvent::TOPICS,
        &[
            "user.created",
            "user.removed",
            "user.signed_up",
            "user.renamed",
            "user.moved",
            "audit.user_ping"
        ]
    );
    assert_eq!(Invoice::TOPICS, &["billing.v2.paid"]);
    assert_eq!(HTTPRequestEvent::TOPICS, &["http_request.received"]);
}

#[test]
fn payloads_are_the_variant_content() {
    assert_eq!(
        round_trip(&UserEvent::Created {
            id: 1,
            name: "ada".into()
        }),
        json!({"id": 1, "name": "ada"})
    );
    assert_eq!(round_trip(&UserEvent::Renamed("bob".into())), json!("bob"));
    assert_eq!(round_trip(&UserEvent::Moved(3, 4)), json!([3, 4]));
    assert_eq!(round_trip(&UserEvent::Ping), json!(null));
}

#[test]
fn field_serde_attributes_apply() {
    let e = UserEvent::SignedUp {
        user_id: 9,
        referrer: None,
        big: 7,
    };
    assert_eq!(round_trip(&e), json!({"userId": 9, "big": "7"}));
    let e = UserEvent::SignedUp {
        user_id: 9,
        referrer: Some("x".into()),
        big: 7,
    };
    assert_eq!(
        round_trip(&e),
        json!({"userId": 9, "referrer": "x", "big": "7"})
    );
}

#[test]
fn an_added_optional_field_does_not_break_older_payloads() {
    let old = envelope(
        Message::json(
            "user.signed_up",
            &json!({"userId": 1, "big": "2", "extra": true}),
        )
        .unwrap(),
    );
    assert_eq!(
        UserEvent::from_envelope(&old).unwrap(),
        UserEvent::SignedUp {
            user_id: 1,
            referrer: None,
            big: 2
        }
    );
}

#[test]
fn wrong_topics_and_payloads_are_errors_not_panics() {
    let other = envelope(Message::new("user.unknown", Payload::null()));
    assert_eq!(
        UserEvent::from_envelope(&other).unwrap_err().code(),
        herald::ErrorCode::NotFound
    );
    let bad = envelope(Message::json("user.created", &json!({"id": "x"})).unwrap());
    assert_eq!(
        UserEvent::from_envelope(&bad).unwrap_err().code(),
        herald::ErrorCode::Validation
    );
    let bytes = envelope(
        Message::new("user.created", Payload::bytes(vec![0xff]))
            .content_type("application/octet-stream"),
    );
    assert!(UserEvent::from_envelope(&bytes).is_err());
}

#[test]
fn invalid_enums_do_not_compile() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}

//! Envelope v1: the checked-in JSON Schema, the Rust types and the decoder
//! agree. Regenerate the file with `HERALD_UPDATE_SCHEMA=1 cargo test -p herald --test schema`.

use std::path::PathBuf;

use herald::{Envelope, Message, Payload, Priority};
use serde_json::{json, Value};

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schema/envelope.v1.json")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&herald::schema::envelope_v1()).expect("the schema compiles")
}

#[test]
fn checked_in_schema_matches_the_types() {
    let generated = herald::schema::envelope_v1_text();
    if std::env::var_os("HERALD_UPDATE_SCHEMA").is_some() {
        std::fs::write(schema_path(), &generated).unwrap();
    }
    let checked_in =
        std::fs::read_to_string(schema_path()).expect("schema/envelope.v1.json exists");
    assert!(
        checked_in == generated,
        "schema/envelope.v1.json differs from the types; regenerate it with \
         HERALD_UPDATE_SCHEMA=1 cargo test -p herald --test schema"
    );
}

fn samples() -> Vec<Envelope> {
    let full = Message::json("orders.placed", &json!({"id": 1, "lines": [1, 2]}))
        .unwrap()
        .key("customer-7")
        .idempotency_key("order-1")
        .priority(Priority::High)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .schema_version("2")
        .expires_at(chrono::Utc::now() + chrono::Duration::hours(1));
    let bytes = Message::new("blobs.stored", Payload::bytes(vec![0u8, 159, 146, 150]))
        .content_type("application/octet-stream");
    let null = Message::new("a", Payload::null());
    [full, bytes, null]
        .into_iter()
        .map(|m| {
            let json = serde_json::to_vec(&m.into_envelope_for_test()).unwrap();
            Envelope::from_json(&json).unwrap()
        })
        .collect()
}

trait ForTest {
    fn into_envelope_for_test(self) -> Envelope;
}

impl ForTest for Message {
    fn into_envelope_for_test(self) -> Envelope {
        herald::Publish::into_envelope(self, &std::sync::Arc::from("svc")).unwrap()
    }
}

/// `env`'s JSON passes the schema and decodes back to `env`.
fn validates_and_round_trips(v: &jsonschema::Validator, env: &Envelope) {
    let value: Value = serde_json::from_slice(&env.to_json().unwrap()).unwrap();
    let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{value}: {errors:?}");
    let back = Envelope::from_json(&env.to_json().unwrap()).unwrap();
    assert_eq!(&back, env);
}

#[test]
fn generated_envelopes_validate_and_round_trip() {
    let v = validator();
    for env in samples() {
        validates_and_round_trips(&v, &env);
    }
}

#[test]
fn required_fields_agree_between_schema_and_decoder() {
    let schema = herald::schema::envelope_v1();
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        ["correlation_id", "id", "kind", "source", "time", "topic"]
    );
    let base = good();
    let v = validator();
    for field in base.as_object().unwrap().keys() {
        let mut without = base.clone();
        without.as_object_mut().unwrap().remove(field);
        let schema_ok = v.is_valid(&without);
        let decoder_ok = Envelope::from_json(without.to_string().as_bytes()).is_ok();
        assert_eq!(
            schema_ok, decoder_ok,
            "schema and decoder disagree on dropping `{field}`"
        );
        assert_eq!(schema_ok, !required.contains(&field.as_str()), "`{field}`");
    }
}

fn good() -> Value {
    json!({
        "id": "01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a80",
        "time": "2024-11-27T19:17:24.474Z",
        "source": "billing",
        "kind": "event",
        "topic": "invoice.paid",
        "seq": 3,
        "key": "customer-1",
        "correlation_id": "01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a81",
        "causation_id": "01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a82",
        "idempotency_key": "inv-1",
        "priority": "normal",
        "headers": {"traceparent": "00-abc"},
        "content_type": "application/json",
        "schema_version": "1",
        "expires_at": "2030-01-01T00:00:00Z",
        "attempt": 1,
        "payload": {"amount": 12}
    })
}

#[test]
fn the_reference_envelope_is_accepted_by_both() {
    assert!(validator().is_valid(&good()));
    Envelope::from_json(good().to_string().as_bytes()).unwrap();
}

#[test]
fn known_bad_envelopes_are_rejected_by_schema_and_decoder() {
    let bad: Vec<(&str, Value)> = vec![
        ("topic with uppercase", json!({"topic": "Invoice.paid"})),
        (
            "topic with empty segment",
            json!({"topic": "invoice..paid"}),
        ),
        ("topic with a space", json!({"topic": "invoice paid"})),
        ("topic too long", json!({"topic": "a".repeat(256)})),
        ("id not a uuid", json!({"id": "not-a-uuid"})),
        ("kind unknown", json!({"kind": "gossip"})),
        ("priority unknown", json!({"priority": "urgent"})),
        ("seq zero", json!({"seq": 0})),
        ("seq negative", json!({"seq": -1})),
        ("attempt zero", json!({"attempt": 0})),
        ("time not RFC 3339", json!({"time": "yesterday"})),
        ("source empty", json!({"source": ""})),
        (
            "source with control character",
            json!({"source": "bil\nling"}),
        ),
        ("key empty", json!({"key": ""})),
        ("key too long", json!({"key": "k".repeat(1025)})),
        ("correlation id not a uuid", json!({"correlation_id": 5})),
        ("headers not strings", json!({"headers": {"a": 1}})),
        (
            "too many headers",
            json!({"headers": (0..65).map(|i| (format!("h{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
        ),
        ("expires_at not a time", json!({"expires_at": "soon"})),
        ("topic not a string", json!({"topic": ["a"]})),
    ];
    let v = validator();
    for (what, patch) in bad {
        let mut env = good();
        for (k, val) in patch.as_object().unwrap() {
            env[k] = val.clone();
        }
        assert!(!v.is_valid(&env), "the schema accepted: {what}");
        let decoded = Envelope::from_json(env.to_string().as_bytes());
        let err = decoded.expect_err(what);
        assert_eq!(err.code(), herald::ErrorCode::Validation, "{what}");
    }
}

#[test]
fn rules_beyond_the_schema_are_enforced_by_the_decoder() {
    for (what, patch) in [
        (
            "id is v4, not v7",
            json!({"id": "9b2f6a52-3c1e-4f0a-8b7d-2f1d5c6b7a80"}),
        ),
        (
            "time differs from the id's",
            json!({"time": "2020-01-01T00:00:00Z"}),
        ),
        (
            "base64 payload that is not base64",
            json!({"content_type": "application/octet-stream", "payload": "%%%"}),
        ),
    ] {
        let mut env = good();
        for (k, val) in patch.as_object().unwrap() {
            env[k] = val.clone();
        }
        let err = Envelope::from_json(env.to_string().as_bytes()).expect_err(what);
        assert_eq!(err.code(), herald::ErrorCode::Validation, "{what}");
    }
}

#[test]
fn garbage_never_panics_the_decoder() {
    let inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"{\"id\": {}}".to_vec(),
        "{\"topic\": \"\u{1F600}\"}".as_bytes().to_vec(),
        b"{\"payload\": 1e999999}".to_vec(),
    ];
    for input in inputs {
        let err = Envelope::from_json(&input).unwrap_err();
        assert_eq!(err.code(), herald::ErrorCode::Validation);
    }
    let mut env = good();
    env["payload"] = json!("x".repeat(2 * 1024 * 1024));
    let limits = herald::Limits::default();
    let err = Envelope::from_json_with(env.to_string().as_bytes(), &limits).unwrap_err();
    assert_eq!(err.code(), herald::ErrorCode::Backpressure);
}

/// Issue 22 item 14: the schema and the decoder agree on the envelopes of a
/// command and its response as they do on events; both come from a real
/// call, not built by hand.
#[tokio::test]
async fn command_and_response_envelopes_validate_and_round_trip() {
    let bus = herald::Bus::memory();
    let (seen, mut commands) = tokio::sync::mpsc::unbounded_channel();
    bus.handle_command("math.double", move |req| {
        let seen = seen.clone();
        async move {
            let n: u64 = req.decode()?;
            seen.send(req).expect("the test holds the receiver");
            Payload::json(&(n * 2))
        }
    })
    .unwrap();
    let response = bus
        .call(Message::json("math.double", &21).unwrap().key("k-1"))
        .await
        .unwrap();
    let command = commands.recv().await.expect("the handler saw the command");
    assert_eq!(command.kind(), herald::Kind::Command);
    assert_eq!(response.kind(), herald::Kind::Response);
    assert_eq!(response.causation_id(), Some(command.id()));
    let v = validator();
    for env in [command, response] {
        validates_and_round_trips(&v, &env);
    }
}

/// Issue 22 item 14: the tolerant reader of DESIGN.md: an envelope from a
/// newer producer, with top-level fields this version does not know, is
/// read as the fields it does know, by the decoder and the schema alike.
#[test]
fn unknown_top_level_fields_are_read_past() {
    let mut newer = good();
    let extra = newer.as_object_mut().unwrap();
    extra.insert("tenant".into(), json!("acme"));
    extra.insert("routing".into(), json!({"region": "eu", "hops": [1, 2]}));
    extra.insert("x_flag".into(), json!(null));
    assert!(validator().is_valid(&newer));
    let read = Envelope::from_json(newer.to_string().as_bytes()).unwrap();
    let known = Envelope::from_json(good().to_string().as_bytes()).unwrap();
    assert_eq!(read, known);
}

//! CloudEvents 1.0, structured mode (DESIGN.md §3): the gateway accepts
//! `application/cloudevents+json` (one event) and
//! `application/cloudevents-batch+json` (a list) on publish, and emits them
//! on replay (`Accept: application/cloudevents-batch+json`) and on
//! WebSocket subscriptions opened with `"format": "cloudevents"`.
//!
//! Owns the mapping. `type` is the topic; `data` (or `data_base64`) the
//! payload; `datacontenttype` the content type. herald's other fields are
//! extension attributes: `seq`, `key`, `correlationid`, `causationid`,
//! `idempotencykey`, `priority`, `kind`, `schemaversion`, `expiresat`,
//! `attempt`, `traceparent`, `tracestate`. A producer's `source` and `id`
//! are kept: `source` in the `ce-source` header (the envelope's own
//! `source` is the service that published), and `source` + `id` become the
//! idempotency key when none is given, since CloudEvents promises that pair
//! is unique. The optional attributes herald has no field for are checked
//! and kept in headers, and come back out as themselves on replay and on
//! WebSocket subscriptions: `time` (RFC 3339; `ce-time`, the envelope's
//! own `time` being when herald accepted it), `subject` (`ce-subject`) and
//! `dataschema` (a URI; `ce-dataschema`). An attribute of the wrong type or
//! shape is refused, never dropped.

use std::collections::BTreeMap;

use herald::Envelope;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::message::MessageIn;

/// One CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// A JSON list of CloudEvents.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The header keeping a CloudEvent's `source`.
pub const SOURCE_HEADER: &str = "ce-source";
/// The header keeping a CloudEvent's `time`.
pub const TIME_HEADER: &str = "ce-time";
/// The header keeping a CloudEvent's `subject`.
pub const SUBJECT_HEADER: &str = "ce-subject";
/// The header keeping a CloudEvent's `dataschema`.
pub const DATASCHEMA_HEADER: &str = "ce-dataschema";

/// `env` as a structured-mode CloudEvent, as JSON text. Built from the
/// envelope's own encoding field by field, with the payload kept as the raw
/// JSON it was published as (a number no `f64` holds, say, is not lost to
/// a re-parse).
pub fn from_envelope(env: &Envelope) -> Box<RawValue> {
    let encoded = serde_json::to_string(env).unwrap_or_else(|_| "{}".to_owned());
    let wire: BTreeMap<String, Box<RawValue>> = serde_json::from_str(&encoded).unwrap_or_default();
    let mut ce: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
    let mut put = |name: &'static str, v: Option<Box<RawValue>>| {
        if let Some(v) = v.filter(|v| v.get() != "null") {
            ce.insert(name, v);
        }
    };
    let field = |name: &str| wire.get(name).cloned();
    put("specversion", raw(json!("1.0")));
    put("id", raw(json!(env.id().to_string())));
    put(
        "source",
        raw(json!(env.header(SOURCE_HEADER).unwrap_or(env.source()))),
    );
    put("type", raw(json!(env.topic().as_str())));
    put(
        "time",
        env.header(TIME_HEADER)
            .map_or_else(|| field("time"), |t| raw(json!(t))),
    );
    put(
        "subject",
        env.header(SUBJECT_HEADER).and_then(|s| raw(json!(s))),
    );
    put(
        "dataschema",
        env.header(DATASCHEMA_HEADER).and_then(|d| raw(json!(d))),
    );
    put("datacontenttype", raw(json!(env.content_type())));
    if herald::envelope::is_json_content_type(env.content_type()) {
        put("data", field("payload"));
    } else {
        put("data_base64", field("payload"));
    }
    put("seq", field("seq"));
    put("key", field("key"));
    put("correlationid", field("correlation_id"));
    put("causationid", field("causation_id"));
    put("idempotencykey", field("idempotency_key"));
    put("priority", field("priority"));
    put("kind", field("kind"));
    put("schemaversion", field("schema_version"));
    put("expiresat", field("expires_at"));
    put("attempt", field("attempt"));
    put(
        "traceparent",
        env.header("traceparent").and_then(|t| raw(json!(t))),
    );
    put(
        "tracestate",
        env.header("tracestate").and_then(|t| raw(json!(t))),
    );
    serde_json::to_string(&ce)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .unwrap_or_else(|| RawValue::from_string("{}".to_owned()).unwrap_or_default())
}

/// `v` as raw JSON.
fn raw(v: Value) -> Option<Box<RawValue>> {
    RawValue::from_string(v.to_string()).ok()
}

fn text(ce: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match ce.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::validation(format!(
            "CloudEvent attribute `{name}` must be a string, not {other}"
        ))),
    }
}

/// The message a structured-mode CloudEvent publishes to `topic` (its
/// `type` must be `topic`). Required attributes are checked; an unknown
/// extension attribute is refused, like an unknown field of a message.
pub fn to_message(topic: &str, ce: Value) -> Result<MessageIn, ApiError> {
    let Value::Object(ce) = ce else {
        return Err(ApiError::validation("a CloudEvent is a JSON object"));
    };
    if text(&ce, "specversion")?.as_deref() != Some("1.0") {
        return Err(ApiError::validation(
            "CloudEvent `specversion` must be \"1.0\"",
        ));
    }
    let id = text(&ce, "id")?.filter(|s| !s.is_empty());
    let source = text(&ce, "source")?.filter(|s| !s.is_empty());
    let (Some(id), Some(source)) = (id, source) else {
        return Err(ApiError::validation(
            "a CloudEvent needs non-empty `id` and `source`",
        ));
    };
    match text(&ce, "type")? {
        Some(t) if t == topic => {}
        Some(t) => {
            return Err(ApiError::validation(format!(
                "CloudEvent type {t:?} does not match the topic {topic:?} it is published to"
            )))
        }
        None => {
            return Err(ApiError::validation(
                "a CloudEvent needs a `type` (the topic)",
            ))
        }
    }
    const KNOWN: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "data",
        "data_base64",
        "seq",
        "key",
        "correlationid",
        "causationid",
        "idempotencykey",
        "priority",
        "kind",
        "schemaversion",
        "expiresat",
        "attempt",
        "traceparent",
        "tracestate",
    ];
    if let Some(unknown) = ce.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::validation(format!(
            "unknown CloudEvent attribute `{unknown}`"
        )));
    }
    let mut headers = BTreeMap::from([(SOURCE_HEADER.to_owned(), source.clone())]);
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = text(&ce, name)? {
            headers.insert(name.to_owned(), v);
        }
    }
    if let Some(t) = text(&ce, "time")? {
        chrono::DateTime::parse_from_rfc3339(&t).map_err(|_| {
            ApiError::validation(format!(
                "CloudEvent `time` {t:?} is not an RFC 3339 timestamp"
            ))
        })?;
        headers.insert(TIME_HEADER.to_owned(), t);
    }
    if let Some(subject) = text(&ce, "subject")? {
        if subject.is_empty() {
            return Err(ApiError::validation(
                "CloudEvent `subject` must not be empty when present",
            ));
        }
        headers.insert(SUBJECT_HEADER.to_owned(), subject);
    }
    if let Some(schema) = text(&ce, "dataschema")? {
        if !is_uri(&schema) {
            return Err(ApiError::validation(format!(
                "CloudEvent `dataschema` {schema:?} is not an absolute URI"
            )));
        }
        headers.insert(DATASCHEMA_HEADER.to_owned(), schema);
    }
    if let Some(ct) = text(&ce, "datacontenttype")? {
        let shaped = ct
            .split(';')
            .next()
            .and_then(|m| m.trim().split_once('/'))
            .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !s.contains('/'));
        if !shaped {
            return Err(ApiError::validation(format!(
                "CloudEvent `datacontenttype` {ct:?} is not a media type (type/subtype)"
            )));
        }
    }
    let mut m = Map::new();
    if let Some(data) = ce.get("data") {
        m.insert("payload".into(), data.clone());
    }
    if let Some(b64) = ce.get("data_base64") {
        m.insert("payload_base64".into(), b64.clone());
    }
    let copy = |m: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = ce.get(from).filter(|v| !v.is_null()) {
            m.insert(to.into(), v.clone());
        }
    };
    copy(&mut m, "datacontenttype", "content_type");
    copy(&mut m, "key", "key");
    copy(&mut m, "correlationid", "correlation_id");
    copy(&mut m, "causationid", "causation_id");
    copy(&mut m, "priority", "priority");
    copy(&mut m, "kind", "kind");
    copy(&mut m, "schemaversion", "schema_version");
    copy(&mut m, "expiresat", "expires_at");
    let key = text(&ce, "idempotencykey")?.unwrap_or_else(|| format!("{source}/{id}"));
    m.insert("idempotency_key".into(), json!(key));
    m.insert("headers".into(), json!(headers));
    let text = Value::Object(m).to_string();
    crate::extract::decode(text.as_bytes())
}

/// Whether `s` is an absolute URI (RFC 3986: a scheme, `:`, then no
/// spaces or control characters).
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloudevent_becomes_a_message_and_an_envelope_a_cloudevent() {
        let ce = json!({
            "specversion": "1.0", "id": "A-1", "source": "/shop", "type": "orders.placed",
            "datacontenttype": "application/json", "data": {"n": 1}, "key": "c-9",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        });
        let m = to_message("orders.placed", ce)
            .unwrap()
            .into_message("orders.placed")
            .unwrap();
        let bus = herald::Bus::memory();
        let env = bus.prepare(m).unwrap().remove(0);
        assert_eq!(env.idempotency_key(), "/shop/A-1");
        assert_eq!(env.key(), Some("c-9"));
        let back: Value = serde_json::from_str(from_envelope(&env).get()).unwrap();
        assert_eq!(back["type"], "orders.placed");
        assert_eq!(back["source"], "/shop");
        assert_eq!(back["data"], json!({"n": 1}));
        assert_eq!(back["key"], "c-9");
        assert_eq!(back["specversion"], "1.0");
        assert_eq!(
            back["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn a_number_no_float_holds_stays_as_published() {
        let m = herald::Message::new(
            "big.num",
            herald::Payload::from_json_text("1e400".to_owned()).unwrap(),
        );
        let env = herald::Bus::memory().prepare(m).unwrap().remove(0);
        let ce = from_envelope(&env);
        assert!(ce.get().contains(r#""data":1e400"#), "{}", ce.get());
        assert!(ce.get().contains(r#""time":"20"#), "{}", ce.get());
        assert!(ce.get().contains(r#""seq""#) || env.seq().is_none());
    }

    #[test]
    fn time_subject_and_dataschema_are_kept() {
        let ce = json!({
            "specversion": "1.0", "id": "A-2", "source": "/shop", "type": "orders.placed",
            "time": "2026-01-02T03:04:05.678Z", "subject": "order/7",
            "dataschema": "https://schemas.example.com/order/1", "data": 1,
        });
        let m = to_message("orders.placed", ce)
            .unwrap()
            .into_message("orders.placed")
            .unwrap();
        let env = herald::Bus::memory().prepare(m).unwrap().remove(0);
        let back: Value = serde_json::from_str(from_envelope(&env).get()).unwrap();
        assert_eq!(back["time"], "2026-01-02T03:04:05.678Z");
        assert_eq!(back["subject"], "order/7");
        assert_eq!(back["dataschema"], "https://schemas.example.com/order/1");
    }

    #[test]
    fn bad_cloudevents_are_refused() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "a.b"});
        assert!(to_message("a.b", base.clone()).is_ok());
        for (field, value) in [
            ("specversion", json!("0.3")),
            ("type", json!("c.d")),
            ("id", json!("")),
            ("source", json!(7)),
            ("colour", json!("red")),
            ("time", json!("noon")),
            ("time", json!(12)),
            ("subject", json!("")),
            ("dataschema", json!("not a uri")),
            ("datacontenttype", json!("json")),
        ] {
            let mut ce = base.clone();
            ce[field] = value;
            let e = to_message("a.b", ce).unwrap_err();
            assert_eq!(e.code(), herald::ErrorCode::Validation, "{field}");
        }
    }
}

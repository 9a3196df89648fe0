//! The envelope as message headers and a body: the wire form on brokers that
//! carry headers (NATS JetStream, Kafka), so their plain clients can read
//! herald's events and publish events herald consumes.
//!
//! Owns the header names ([`ID`], [`SOURCE`], …), [`encode`] and [`decode`],
//! and [`Scheme`]: the same mapping under another broker's customary names
//! ([`encode_with`], [`decode_with`]; Kafka's are `herald-kafka`'s).
//! Every envelope field but `topic`, `seq`, `attempt` and `payload` travels as
//! a `Herald-*` header (the broker gives the topic, `seq` and `attempt`; the
//! body is the payload's bytes, JSON text by default). The envelope's own
//! headers travel under their own names (`traceparent` stays `traceparent`),
//! so the field headers' names (in any case) and names starting with
//! `Nats-` are reserved. It does not know any broker's header type.
//!
//! A message from a plain client needs no `Herald-*` header: [`decode`] fills
//! what is missing from the [`Origin`] the transport gives (the broker's
//! timestamp and a number unique to the message), so redeliveries of one
//! message keep one id.
//!
//! ```
//! use herald::backend::headers::{self, Origin};
//! use herald::{Bus, Message, Payload, Topic};
//! let plain = headers::decode(
//!     Topic::new("orders.placed").unwrap(),
//!     [("traceparent", "00-abc-01")],
//!     br#"{"id":7}"#.to_vec().into(),
//!     Origin { time_ms: 1_700_000_000_000, unique: 42, source: "nats" },
//! )
//! .unwrap();
//! assert_eq!(plain.source(), "nats");
//! assert_eq!(plain.header("traceparent"), Some("00-abc-01"));
//! let (names, body) = headers::encode(&plain).unwrap();
//! let again = headers::decode(
//!     plain.topic().clone(),
//!     names.iter().map(|(n, v)| (*n, v.as_str())),
//!     body,
//!     Origin { time_ms: 0, unique: 0, source: "other" },
//! )
//! .unwrap();
//! assert_eq!(again, plain);
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::model::envelope::{
    check_text, format_time, is_json_content_type, parse_time, Envelope, Kind, Priority,
};
use crate::model::error::{Error, Result};
use crate::model::payload::{Payload, JSON_CONTENT_TYPE};
use crate::model::topic::Topic;

/// The envelope's `id` (a UUID v7).
pub const ID: &str = "Herald-Id";
/// The producing service.
pub const SOURCE: &str = "Herald-Source";
/// `event`, `command`, `response` or `intent`; `event` when absent.
pub const KIND: &str = "Herald-Kind";
/// The ordering key.
pub const KEY: &str = "Herald-Key";
/// The originating request; the id when absent.
pub const CORRELATION_ID: &str = "Herald-Correlation-Id";
/// The id of the message that caused this one.
pub const CAUSATION_ID: &str = "Herald-Causation-Id";
/// An idempotency key set by the producer (the id is the default).
pub const IDEMPOTENCY_KEY: &str = "Herald-Idempotency-Key";
/// `low`, `normal`, `high` or `critical`; `normal` when absent.
pub const PRIORITY: &str = "Herald-Priority";
/// The payload's schema version.
pub const SCHEMA_VERSION: &str = "Herald-Schema-Version";
/// When the message expires (RFC 3339).
pub const EXPIRES_AT: &str = "Herald-Expires-At";
/// The body's content type; JSON when absent and the body is JSON, raw
/// bytes (`application/octet-stream`) when absent and it is not.
pub const CONTENT_TYPE: &str = "Content-Type";

/// Content type of a body from a plain client that is not JSON (the one a
/// [`Payload::bytes`] message gets by default).
pub use crate::model::payload::OCTET_STREAM;

/// The header names one broker's messages carry the envelope's fields under,
/// and the further names it reserves. [`HERALD`] is the `Herald-*` scheme.
#[derive(Debug, Clone, Copy)]
pub struct Scheme {
    /// The field headers, in the order of [`HERALD`]'s: id, source, kind,
    /// key, correlation id, causation id, idempotency key, priority,
    /// schema version, expires at, content type.
    pub fields: [&'static str; 11],
    /// Names (any case) that are the broker's or the scheme's own besides
    /// the fields: an envelope header may not take them, [`decode_with`]
    /// skips them.
    pub reserved: &'static [&'static str],
    /// Prefixes (any case) reserved the same way.
    pub reserved_prefixes: &'static [&'static str],
}

/// The `Herald-*` scheme: NATS and the default.
pub const HERALD: Scheme = Scheme {
    fields: FIELDS,
    reserved: &[],
    reserved_prefixes: &["nats-"],
};

impl Scheme {
    /// Whether an envelope header may not travel under `name` in this scheme.
    pub fn is_reserved(&self, name: &str) -> bool {
        self.fields
            .iter()
            .chain(self.reserved)
            .any(|f| f.eq_ignore_ascii_case(name))
            || self.reserved_prefixes.iter().any(|p| {
                name.get(..p.len())
                    .is_some_and(|n| n.eq_ignore_ascii_case(p))
            })
    }

    fn field(&self, i: usize) -> &'static str {
        self.fields[i]
    }
}

const F_ID: usize = 0;
const F_SOURCE: usize = 1;
const F_KIND: usize = 2;
const F_KEY: usize = 3;
const F_CORRELATION_ID: usize = 4;
const F_CAUSATION_ID: usize = 5;
const F_IDEMPOTENCY_KEY: usize = 6;
const F_PRIORITY: usize = 7;
const F_SCHEMA_VERSION: usize = 8;
const F_EXPIRES_AT: usize = 9;
const F_CONTENT_TYPE: usize = 10;

/// Whether an envelope header may not travel under `name`: the field
/// headers above and the broker's own (`Nats-*`), in any case.
pub fn is_reserved(name: &str) -> bool {
    HERALD.is_reserved(name)
}

/// What the broker knows of a message, for the fields its headers lack.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// When the broker stored it (ms since the epoch): the time of a made-up id.
    pub time_ms: i64,
    /// A number no other message of the topic shares (a stream sequence):
    /// the rest of a made-up id.
    pub unique: u64,
    /// The `source` of a message without one.
    pub source: &'a str,
}

/// The headers (name, value) and body of `envelope`. A `VALIDATION` error
/// when one of its headers has a reserved name ([`is_reserved`]).
pub fn encode(envelope: &Envelope) -> Result<(Vec<(&str, String)>, Bytes)> {
    encode_with(&HERALD, envelope)
}

/// [`encode`] under `scheme`'s names. The fields at their defaults (kind
/// `event`, priority `normal`) and absent options are left out.
pub fn encode_with<'e>(
    scheme: &Scheme,
    envelope: &'e Envelope,
) -> Result<(Vec<(&'e str, String)>, Bytes)> {
    let f = |i| scheme.field(i);
    let mut out: Vec<(&str, String)> = Vec::with_capacity(8 + envelope.headers.len());
    out.push((f(F_ID), envelope.id.to_string()));
    out.push((f(F_SOURCE), envelope.source.to_string()));
    if envelope.kind != Kind::Event {
        out.push((f(F_KIND), kind_name(envelope.kind).to_owned()));
    }
    if let Some(k) = &envelope.key {
        out.push((f(F_KEY), k.clone()));
    }
    out.push((f(F_CORRELATION_ID), envelope.correlation_id.to_string()));
    if let Some(c) = envelope.causation_id {
        out.push((f(F_CAUSATION_ID), c.to_string()));
    }
    if let Some(k) = &envelope.idempotency_key {
        out.push((f(F_IDEMPOTENCY_KEY), k.clone()));
    }
    if envelope.priority != Priority::Normal {
        out.push((f(F_PRIORITY), priority_name(envelope.priority).to_owned()));
    }
    out.push((f(F_CONTENT_TYPE), envelope.content_type.to_string()));
    if let Some(v) = &envelope.schema_version {
        out.push((f(F_SCHEMA_VERSION), v.clone()));
    }
    if let Some(t) = &envelope.expires_at {
        out.push((f(F_EXPIRES_AT), format_time(t)));
    }
    for (name, value) in &envelope.headers {
        if scheme.is_reserved(name) {
            return Err(Error::validation(format!(
                "header {name:?} of a message to `{}` has a reserved name \
                 (the transport's field headers: {})",
                envelope.topic,
                scheme.fields.join(", ")
            )));
        }
        out.push((name.as_str(), value.clone()));
    }
    let body = match &envelope.payload {
        Payload::Json(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
        Payload::Bytes(b) => b.clone(),
    };
    Ok((out, body))
}

/// The envelope of a message on `topic` with `headers` and `body`; fields
/// the headers lack come from `origin` (see the module docs). A
/// `VALIDATION` error names a header that does not parse.
pub fn decode<'h>(
    topic: Topic,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body: Bytes,
    origin: Origin<'_>,
) -> Result<Envelope> {
    decode_with(&HERALD, topic, headers, body, origin)
}

/// [`decode`] under `scheme`'s names; its reserved names are skipped.
pub fn decode_with<'h>(
    scheme: &Scheme,
    topic: Topic,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body: Bytes,
    origin: Origin<'_>,
) -> Result<Envelope> {
    let mut fields: BTreeMap<&'static str, &'h str> = BTreeMap::new();
    let mut user = BTreeMap::new();
    for (name, value) in headers {
        match scheme.fields.iter().find(|f| f.eq_ignore_ascii_case(name)) {
            Some(field) => {
                fields.insert(field, value);
            }
            None if scheme.is_reserved(name) => {}
            None => {
                user.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    let name = |i| scheme.field(i);
    let uuid = |field: &str| -> Result<Option<Uuid>> {
        fields
            .get(field)
            .map(|v| {
                Uuid::parse_str(v).map_err(|e| {
                    Error::validation(format!("header {field} {v:?} is not a UUID: {e}"))
                })
            })
            .transpose()
    };
    let text = |field: &str| -> Result<Option<String>> {
        fields
            .get(field)
            .map(|v| check_text(field, v).map(|()| (*v).to_owned()))
            .transpose()
    };
    let id = match uuid(name(F_ID))? {
        Some(id) if id.get_version_num() == 7 => id,
        Some(id) => {
            return Err(Error::validation(format!(
                "header {} {id} is not a UUID v7",
                name(F_ID)
            )))
        }
        None => made_up_id(origin),
    };
    let kind = match fields.get(name(F_KIND)) {
        None => Kind::Event,
        Some(v) => parse_kind(name(F_KIND), v)?,
    };
    let priority = match fields.get(name(F_PRIORITY)) {
        None => Priority::Normal,
        Some(v) => parse_priority(name(F_PRIORITY), v)?,
    };
    let expires_at = fields
        .get(name(F_EXPIRES_AT))
        .map(|v| parse_time(&format!("header {}", name(F_EXPIRES_AT)), v))
        .transpose()?;
    let source = text(name(F_SOURCE))?.unwrap_or_else(|| origin.source.to_owned());
    let content_type = text(name(F_CONTENT_TYPE))?;
    let (content_type, payload) = body_payload(content_type, body)?;
    Ok(Envelope {
        id,
        source: Arc::from(source),
        kind,
        topic,
        seq: None,
        partition: None,
        key: text(name(F_KEY))?,
        correlation_id: uuid(name(F_CORRELATION_ID))?.unwrap_or(id),
        causation_id: uuid(name(F_CAUSATION_ID))?,
        idempotency_key: text(name(F_IDEMPOTENCY_KEY))?,
        priority,
        headers: user,
        content_type,
        schema_version: text(name(F_SCHEMA_VERSION))?,
        expires_at,
        attempt: 1,
        payload,
        published_at: Default::default(),
    })
}

const FIELDS: [&str; 11] = [
    ID,
    SOURCE,
    KIND,
    KEY,
    CORRELATION_ID,
    CAUSATION_ID,
    IDEMPOTENCY_KEY,
    PRIORITY,
    SCHEMA_VERSION,
    EXPIRES_AT,
    CONTENT_TYPE,
];

/// The body as a payload under its content type: JSON content must be JSON
/// (an empty body is `null`); without a content type, a body that is not
/// JSON is raw bytes.
fn body_payload(content_type: Option<String>, body: Bytes) -> Result<(Cow<'static, str>, Payload)> {
    let json = |body: &Bytes| -> Option<Payload> {
        if body.is_empty() {
            return Some(Payload::null());
        }
        let text = std::str::from_utf8(body).ok()?;
        Payload::from_json_text(text).ok()
    };
    match content_type {
        Some(ct) if is_json_content_type(&ct) => {
            let payload = json(&body).ok_or_else(|| {
                Error::validation(format!(
                    "the body is not JSON but its content type is {ct:?}"
                ))
            })?;
            let ct = if ct == JSON_CONTENT_TYPE {
                Cow::Borrowed(JSON_CONTENT_TYPE)
            } else {
                Cow::Owned(ct)
            };
            Ok((ct, payload))
        }
        Some(ct) => Ok((Cow::Owned(ct), Payload::bytes(body))),
        None => Ok(match json(&body) {
            Some(p) => (Cow::Borrowed(JSON_CONTENT_TYPE), p),
            None => (Cow::Borrowed(OCTET_STREAM), Payload::bytes(body)),
        }),
    }
}

/// A UUID v7 at the origin's time whose other bits are the origin's
/// `unique`, so every delivery of one message gets the same id.
fn made_up_id(origin: Origin<'_>) -> Uuid {
    let mut rest = [0u8; 10];
    rest[2..].copy_from_slice(&origin.unique.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(origin.time_ms.max(0) as u64, &rest).into_uuid()
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Event => "event",
        Kind::Command => "command",
        Kind::Response => "response",
        Kind::Intent => "intent",
    }
}

fn parse_kind(header: &str, v: &str) -> Result<Kind> {
    [Kind::Event, Kind::Command, Kind::Response, Kind::Intent]
        .into_iter()
        .find(|k| kind_name(*k) == v)
        .ok_or_else(|| Error::validation(format!("header {header} {v:?} is not a kind")))
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High => "high",
        Priority::Critical => "critical",
    }
}

fn parse_priority(header: &str, v: &str) -> Result<Priority> {
    [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ]
    .into_iter()
    .find(|p| priority_name(*p) == v)
    .ok_or_else(|| Error::validation(format!("header {header} {v:?} is not a priority")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::Message;
    use crate::ErrorCode;
    use chrono::{DateTime, Utc};

    fn origin() -> Origin<'static> {
        Origin {
            time_ms: 1_700_000_000_123,
            unique: 9,
            source: "plain",
        }
    }

    fn round_trip(env: &Envelope) -> Envelope {
        let (headers, body) = encode(env).unwrap();
        decode(
            env.topic.clone(),
            headers.iter().map(|(n, v)| (*n, v.as_str())),
            body,
            origin(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_field_survives_the_round_trip() {
        let bus = crate::Bus::memory();
        let mut sub = bus.subscribe_raw("h.t").await.unwrap();
        bus.publish(
            Message::new("h.t", Payload::json(&serde_json::json!({"a": 1})).unwrap())
                .key("k1")
                .idempotency_key("once")
                .priority(Priority::High)
                .header("traceparent", "00-1-2-01")
                .schema_version("3")
                .expires_at(
                    DateTime::from_timestamp_millis(Utc::now().timestamp_millis() + 3_600_000)
                        .unwrap(),
                )
                .causation_id(Uuid::now_v7()),
        )
        .await
        .unwrap();
        let d = futures_util::StreamExt::next(&mut sub)
            .await
            .unwrap()
            .unwrap();
        let env = d.envelope().clone();
        let back = round_trip(&env);
        assert_eq!(back, Envelope { seq: None, ..env });

        let bytes = Envelope {
            content_type: Cow::Borrowed(OCTET_STREAM),
            payload: Payload::bytes(vec![0xff, 0, 1]),
            kind: Kind::Intent,
            ..back.clone()
        };
        assert_eq!(round_trip(&bytes), bytes);
    }

    #[test]
    fn a_plain_message_gets_a_stable_id_and_a_payload_by_its_body() {
        let topic = Topic::new("plain.t").unwrap();
        let json = decode(topic.clone(), [], Bytes::from_static(b"[1]"), origin()).unwrap();
        let again = decode(topic.clone(), [], Bytes::from_static(b"[1]"), origin()).unwrap();
        assert_eq!(json.id(), again.id());
        assert_eq!(json.id().get_version_num(), 7);
        assert_eq!(json.timestamp().timestamp_millis(), 1_700_000_000_123);
        assert_eq!(json.correlation_id(), json.id());
        assert_eq!(json.content_type(), JSON_CONTENT_TYPE);
        let raw = decode(
            topic.clone(),
            [],
            Bytes::from_static(b"\xffnot json"),
            origin(),
        )
        .unwrap();
        assert_eq!(raw.content_type(), OCTET_STREAM);
        assert_eq!(raw.payload().as_bytes(), b"\xffnot json");
        let empty = decode(topic, [], Bytes::new(), origin()).unwrap();
        assert!(empty.payload().is_null());
    }

    // The header twin of what fuzz/ found in the envelope decoder: the
    // expiry was read to the nanosecond (and in any year) but written to
    // the millisecond (and unreadably past the year 9999).
    #[test]
    fn the_expiry_header_is_read_as_the_wire_writes_it() {
        let read = |v: &str| {
            decode(
                Topic::new("a.b").unwrap(),
                [(EXPIRES_AT, v)],
                Bytes::new(),
                origin(),
            )
        };
        let env = read("2030-01-01T00:00:00.123456+00:00").unwrap();
        assert_eq!(
            format_time(&env.expires_at().unwrap()),
            "2030-01-01T00:00:00.123Z"
        );
        assert_eq!(round_trip(&env), env);
        let err = read("9999-12-31T23:59:59-01:00").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation, "{err}");
    }

    #[test]
    fn bad_headers_are_validation_errors() {
        let topic = Topic::new("plain.t").unwrap();
        for (name, value) in [
            (ID, "nope"),
            (ID, "67e55044-10b1-426f-9247-bb680e5fe0c8"),
            (KIND, "shout"),
            (PRIORITY, "urgent"),
            (EXPIRES_AT, "tomorrow"),
            (KEY, ""),
            (CONTENT_TYPE, "application/json"),
        ] {
            let err = decode(
                topic.clone(),
                [(name, value)],
                Bytes::from_static(b"{"),
                origin(),
            )
            .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation, "{name}: {value}");
        }
    }

    #[tokio::test]
    async fn a_reserved_header_name_is_refused() {
        let bus = crate::Bus::memory();
        let mut sub = bus.subscribe_raw("h.r").await.unwrap();
        bus.publish(Message::new("h.r", Payload::null()).header("nats-msg-id", "x"))
            .await
            .unwrap();
        let d = futures_util::StreamExt::next(&mut sub)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            encode(d.envelope()).unwrap_err().code(),
            ErrorCode::Validation
        );
    }
}

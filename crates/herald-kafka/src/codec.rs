//! The envelope as a Kafka record: headers under the names Kafka users of
//! this kind of bus already rely on, and the payload as the value.
//!
//! Owns [`SCHEME`] (the field headers: `message_id`, `source`, `kind`,
//! `partition_key`, `correlation_id`, `causation_id`, `idempotency_key`,
//! `priority`, `schema_version`, `expires_at`, `content_type`), the derived
//! headers written beside them (`event_type` = the topic, `routing_key`,
//! `timestamp`, `trace_id` and `span_id` from the `traceparent`,
//! `ttl_seconds`, `retry_count`, `max_retries`, and `seq` where an envelope
//! has one), [`encode`] and [`decode`]. `destination`, `operation_name` and
//! `parent_span_id` are ordinary envelope headers: they travel when a
//! producer sets them. The record key is the envelope's `key`, so per-key
//! order comes from Kafka's partitioning. Where a record sat is the decoded
//! envelope's `seq` (offset + 1) and `partition()`, never a header: a
//! delivered envelope's headers are the producer's. A record from a plain
//! client needs no header at all: its id is made up from its partition and
//! offset, its correlation id is its id, the rest defaults; where a
//! delivered envelope's record sat is read back by `partition_of` and
//! `record_position`. Does not know rdkafka's consumers or producers
//! beyond their header types.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald::backend::headers::{self, Origin, Scheme};
use herald::backend::{TraceParent, TRACEPARENT};
use herald::{Envelope, Result, Topic};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The envelope's id (a UUID v7).
pub const MESSAGE_ID: &str = "message_id";
/// The topic, as herald names it (not namespaced).
pub const EVENT_TYPE: &str = "event_type";
/// The creation time, RFC 3339 with milliseconds.
pub const TIMESTAMP: &str = "timestamp";
/// The topic again, for routers that key on it.
pub const ROUTING_KEY: &str = "routing_key";
/// The ordering key (also the record key).
pub const PARTITION_KEY: &str = "partition_key";
/// The trace id of the `traceparent` (32 hex digits).
pub const TRACE_ID: &str = "trace_id";
/// The span id of the `traceparent` (16 hex digits).
pub const SPAN_ID: &str = "span_id";
/// Seconds from `timestamp` to `expires_at`, rounded up.
pub const TTL_SECONDS: &str = "ttl_seconds";
/// Deliveries before this one that failed (`attempt - 1`).
pub const RETRY_COUNT: &str = "retry_count";
/// Retries a consumer makes before dead-lettering (`max_deliver - 1`).
pub const MAX_RETRIES: &str = "max_retries";
/// The event's `seq` where it has one (dead letters, forwarded events).
pub const SEQ: &str = "seq";

/// The source of a record from a plain client that names none.
pub const PLAIN_SOURCE: &str = "kafka";

/// herald's envelope fields under Kafka's customary names.
pub const SCHEME: Scheme = Scheme {
    fields: [
        MESSAGE_ID,
        "source",
        "kind",
        PARTITION_KEY,
        "correlation_id",
        "causation_id",
        "idempotency_key",
        "priority",
        "schema_version",
        "expires_at",
        "content_type",
    ],
    reserved: &[
        EVENT_TYPE,
        TIMESTAMP,
        ROUTING_KEY,
        TRACE_ID,
        SPAN_ID,
        TTL_SECONDS,
        RETRY_COUNT,
        MAX_RETRIES,
        SEQ,
        "error_type",
    ],
    reserved_prefixes: &["herald_dead_", "original_", "failure_"],
};

/// A Kafka record's parts, herald's side of it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record key: the envelope's `key`.
    pub key: Option<String>,
    /// The headers.
    pub headers: OwnedHeaders,
    /// The value: the payload's bytes.
    pub value: Bytes,
}

/// `envelope` as a record; `max_deliver` fills `max_retries`. A
/// `VALIDATION` error when one of its headers has a reserved name.
pub fn encode(envelope: &Envelope, max_deliver: u32) -> Result<Record> {
    let (pairs, value) = headers::encode_with(&SCHEME, envelope)?;
    let mut out = OwnedHeaders::new_with_capacity(pairs.len() + 8);
    let mut put = |name: &str, value: &str| {
        out = std::mem::take(&mut out).insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    };
    for (name, value) in &pairs {
        put(name, value);
    }
    let time = envelope.timestamp();
    put(EVENT_TYPE, envelope.topic().as_str());
    put(ROUTING_KEY, envelope.topic().as_str());
    put(
        TIMESTAMP,
        &time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    if let Some(tp) = TraceParent::of(envelope) {
        put(TRACE_ID, &tp.trace_id_hex());
        put(SPAN_ID, &format!("{:016x}", tp.span_id()));
    }
    if let Some(expires) = envelope.expires_at() {
        let ms = (expires - time).num_milliseconds().max(0);
        put(TTL_SECONDS, &((ms + 999) / 1000).to_string());
    }
    put(
        RETRY_COUNT,
        &envelope.attempt().saturating_sub(1).to_string(),
    );
    put(MAX_RETRIES, &max_deliver.saturating_sub(1).to_string());
    if let Some(seq) = envelope.seq() {
        put(SEQ, &seq.to_string());
    }
    Ok(Record {
        key: envelope.key().map(str::to_owned),
        headers: out,
        value,
    })
}

/// Where a record sits and what the broker stamped on it.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition; the envelope's `seq` is `offset + 1`.
    pub offset: i64,
    /// The broker's (or producer's) timestamp, ms since the epoch.
    pub time_ms: i64,
}

impl Position {
    /// A number no other record of the topic shares: partition in the high
    /// 16 bits, offset below (for made-up ids).
    fn unique(&self) -> u64 {
        ((self.partition.max(0) as u64) << 48) | (self.offset.max(0) as u64 & ((1 << 48) - 1))
    }
}

/// The partition a delivered envelope's record sat in.
pub(crate) fn partition_of(envelope: &Envelope) -> Option<i32> {
    envelope.partition().and_then(|p| i32::try_from(p).ok())
}

/// Where a delivered envelope's record sat (its time left 0), for its dead
/// letter's `original_partition`/`original_offset`.
pub(crate) fn record_position(envelope: &Envelope) -> Option<Position> {
    partition_of(envelope).map(|p| Position {
        partition: p,
        offset: envelope.seq().unwrap_or(0) as i64 - 1,
        time_ms: 0,
    })
}

/// The text headers of a record, (name, value); values that are not UTF-8
/// or are null are left out (a plain client's binary header is not one of
/// herald's).
pub fn pairs<H: Headers>(headers: Option<&H>) -> Vec<(String, String)> {
    let Some(h) = headers else {
        return Vec::new();
    };
    h.iter()
        .filter_map(|hd| {
            let v = std::str::from_utf8(hd.value?).ok()?;
            Some((hd.key.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The envelope of a record on `topic` with header `pairs`, record `key`
/// and `value`, at `at`: `seq` is `offset + 1`. A `VALIDATION` error names
/// a header that does not parse (the caller dead-letters such a record with
/// source `decode`).
pub fn decode(
    topic: Topic,
    pairs: &[(String, String)],
    key: Option<&[u8]>,
    value: Bytes,
    at: Position,
) -> Result<Envelope> {
    let has = |name: &str| pairs.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let mut extra: Vec<(&str, String)> = Vec::new();
    // A plain client's record: its key orders it like a herald key.
    if !has(PARTITION_KEY) {
        if let Some(k) = key.and_then(|k| std::str::from_utf8(k).ok()) {
            if !k.is_empty() {
                extra.push((PARTITION_KEY, k.to_owned()));
            }
        }
    }
    // A trace from a client that writes ids but no traceparent.
    if !has(TRACEPARENT) {
        if let (Some(t), Some(s)) = (get(TRACE_ID), get(SPAN_ID)) {
            let parsed = (u128::from_str_radix(t, 16), u64::from_str_radix(s, 16));
            if let (Ok(t), Ok(s)) = parsed {
                if let Some(tp) = TraceParent::new(t, s, true) {
                    extra.push((TRACEPARENT, tp.header_value()));
                }
            }
        }
    }
    if !has("expires_at") {
        if let (Some(ttl), Some(ts)) = (get(TTL_SECONDS), get(TIMESTAMP)) {
            let at = DateTime::parse_from_rfc3339(ts).map(|t| t.with_timezone(&Utc));
            if let (Ok(ttl), Ok(at)) = (ttl.parse::<i64>(), at) {
                let expires = at + chrono::Duration::seconds(ttl);
                extra.push((
                    "expires_at",
                    expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ));
            }
        }
    }
    let all = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(extra.iter().map(|(n, v)| (*n, v.as_str())));
    let origin = Origin {
        time_ms: at.time_ms,
        unique: at.unique(),
        source: PLAIN_SOURCE,
    };
    // `attempt` is the consuming group's count, not the record's retry_count.
    let env = headers::decode_with(&SCHEME, topic, all, value, origin)?;
    Ok(env
        .with_seq(at.offset.max(0) as u64 + 1)
        .with_partition(at.partition.max(0) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::{ErrorCode, Message, Payload, Priority};

    fn at(offset: i64) -> Position {
        Position {
            partition: 2,
            offset,
            time_ms: 1_700_000_000_000,
        }
    }

    async fn published(message: Message) -> Envelope {
        let bus = herald::Bus::memory();
        let mut sub = bus.subscribe_raw("k.codec").ephemeral().await.unwrap();
        bus.publish(message).await.unwrap();
        let d = futures_util::StreamExt::next(&mut sub)
            .await
            .unwrap()
            .unwrap();
        d.envelope().clone()
    }

    fn round_trip(env: &Envelope, offset: i64) -> Envelope {
        let rec = encode(env, 5).unwrap();
        decode(
            env.topic().clone(),
            &pairs(Some(&rec.headers)),
            rec.key.as_deref().map(str::as_bytes),
            rec.value,
            at(offset),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_field_survives_and_seq_is_the_offset_plus_one() {
        let env = published(
            Message::new(
                "k.codec",
                Payload::json(&serde_json::json!({"a": 1})).unwrap(),
            )
            .key("user-7")
            .idempotency_key("once")
            .priority(Priority::Critical)
            .schema_version("2")
            .header("destination", "billing")
            .expires_at(
                DateTime::from_timestamp_millis(Utc::now().timestamp_millis() + 3_600_000).unwrap(),
            ),
        )
        .await;
        let back = round_trip(&env, 41);
        assert_eq!(back.seq(), Some(42));
        assert_eq!(back.partition(), Some(2));
        assert_eq!(
            back.headers(),
            env.headers(),
            "the headers published, none of the broker's"
        );
        assert_eq!(
            (back.id(), back.key(), back.priority(), back.expires_at()),
            (env.id(), env.key(), env.priority(), env.expires_at())
        );
        assert_eq!(
            (
                back.idempotency_key(),
                back.schema_version(),
                back.payload()
            ),
            (env.idempotency_key(), env.schema_version(), env.payload())
        );
        assert_eq!(
            round_trip(&back, 41),
            back,
            "a delivered envelope encodes again"
        );
        let rec = encode(&env, 5).unwrap();
        let p = pairs(Some(&rec.headers));
        let get = |n: &str| p.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get(EVENT_TYPE), Some("k.codec"));
        assert_eq!(get(PARTITION_KEY), Some("user-7"));
        assert_eq!(get("priority"), Some("critical"));
        assert_eq!(get("destination"), Some("billing"));
        assert_eq!(get(RETRY_COUNT), Some("0"));
        assert_eq!(get(MAX_RETRIES), Some("4"));
        assert_eq!(get(TTL_SECONDS), Some("3600"));
        let tp = TraceParent::of(&env).unwrap();
        assert_eq!(get(TRACE_ID), Some(tp.trace_id_hex().as_str()));
        assert_eq!(rec.key.as_deref(), Some("user-7"));
    }

    #[test]
    fn a_plain_record_decodes_with_made_up_ids_and_its_key() {
        let topic = Topic::new("k.plain").unwrap();
        let plain = [("trace_id".to_owned(), format!("{:032x}", 7u128))];
        let mut with_span = plain.to_vec();
        with_span.push(("span_id".to_owned(), format!("{:016x}", 9u64)));
        let a = decode(
            topic.clone(),
            &with_span,
            Some(b"acct-1"),
            Bytes::from_static(b"{\"n\":1}"),
            at(0),
        )
        .unwrap();
        let again = decode(
            topic.clone(),
            &with_span,
            Some(b"acct-1"),
            Bytes::from_static(b"{\"n\":1}"),
            at(0),
        )
        .unwrap();
        assert_eq!(a.id(), again.id(), "one record, one id");
        assert_eq!(a.correlation_id(), a.id());
        assert_eq!(a.key(), Some("acct-1"));
        assert_eq!(a.source(), PLAIN_SOURCE);
        assert_eq!(a.seq(), Some(1));
        assert_eq!(TraceParent::of(&a).unwrap().trace_id(), 7);
        let other = decode(topic, &[], None, Bytes::new(), at(1)).unwrap();
        assert_ne!(other.id(), a.id());
        assert!(other.payload().is_null());
    }

    #[test]
    fn malformed_herald_headers_are_validation_errors() {
        let topic = Topic::new("k.bad").unwrap();
        for (name, value) in [
            (MESSAGE_ID, "not-a-uuid"),
            ("priority", "urgent"),
            ("kind", "shout"),
            ("correlation_id", "x"),
        ] {
            let err = decode(
                topic.clone(),
                &[(name.to_owned(), value.to_owned())],
                None,
                Bytes::from_static(b"{}"),
                at(0),
            )
            .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation, "{name}={value}");
        }
    }

    #[tokio::test]
    async fn a_header_under_a_reserved_name_is_refused() {
        let env =
            published(Message::new("k.codec", Payload::null()).header("event_type", "x")).await;
        assert_eq!(encode(&env, 5).unwrap_err().code(), ErrorCode::Validation);
    }
}

//! The envelope: wire format v1 (DESIGN.md §3).
//!
//! Owns [`Envelope`] (what every transport stores and delivers), its [`Kind`]
//! and [`Priority`], the [`Limits`] an envelope is validated against, and the
//! JSON wire form ([`Envelope::to_json`], [`Envelope::from_json`]).
//! `schema/envelope.v1.json` is generated from [`WireEnvelope`], the type the
//! decoder reads; a test keeps the checked-in file equal to it.
//!
//! The envelope is filled in by the bus at publish (id, time, source,
//! correlation); building outgoing messages is the `message` module's job and
//! assigning `seq` is the transport's.
//!
//! Wire rules a non-Rust client needs:
//! - `time` is the id's UUID v7 timestamp, RFC 3339 with milliseconds, UTC.
//! - Unknown top-level fields are accepted and ignored (tolerant reader).
//! - `payload` is JSON when `content_type` is `application/json` or ends in
//!   `+json` (the default); for any other content type it is a base64 string
//!   of the raw bytes. An absent payload is `null`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::model::error::{Error, Result};
use crate::model::payload::{Payload, JSON_CONTENT_TYPE};
use crate::model::topic::Topic;

/// Default bound on a payload's size: 1 MiB (`HERALD_MAX_PAYLOAD_BYTES`).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Default bound on the number of headers of one envelope.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default bound on the bytes of all header names and values together.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest `key`, `idempotency_key`, `source` or `content_type`, in bytes.
pub const MAX_FIELD_LEN: usize = 1024;

/// What a message is for (DESIGN.md §3).
///
/// Events and intents are delivered alike (fan-out, groups); a command has
/// exactly one handler and a response.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Something that happened.
    #[default]
    Event,
    /// A request for exactly one handler, which answers with a response.
    Command,
    /// The answer to a command.
    Response,
    /// Something a producer means to do (delivered like an event).
    Intent,
}

/// Delivery priority: among events waiting for one subscriber, higher first,
/// never reordering events of the same topic and key (DESIGN.md §4.13).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal traffic.
    High,
    /// Ahead of everything.
    Critical,
}

/// Size bounds an envelope is validated against.
///
/// ```
/// use herald::Limits;
/// let limits = Limits::default().max_payload_bytes(4096);
/// assert_eq!(limits.payload_bytes(), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_payload_bytes: usize,
    max_headers: usize,
    max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl Limits {
    /// The widest limits any configuration allows (`HERALD_MAX_PAYLOAD_BYTES`
    /// 64 MiB, 1,024 headers, 1 MiB of headers): what a store decodes its
    /// own records with, since they were checked against the publisher's
    /// limits when they were published.
    pub const WIDEST: Limits = Limits {
        max_payload_bytes: 64 * 1024 * 1024,
        max_headers: 1024,
        max_header_bytes: 1024 * 1024,
    };

    /// Largest payload in bytes; exactly this many passes.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }
    /// Most headers on one envelope.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }
    /// Most bytes of header names and values together.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }
    /// The payload bound.
    pub fn payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
    /// The bound on the number of headers.
    pub fn headers(&self) -> usize {
        self.max_headers
    }
    /// The bound on header names' and values' bytes together.
    pub fn header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Check a payload size: over the bound is `BACKPRESSURE` (DESIGN.md
    /// §4.8), and not retryable: the same payload never passes.
    pub fn check_payload(&self, topic: &str, len: usize) -> Result<()> {
        if len > self.max_payload_bytes {
            return Err(Error::terminal(
                crate::ErrorCode::Backpressure,
                format!(
                    "payload of {len} bytes on `{topic}` is over the limit of {} bytes",
                    self.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Whether header `name: value` fits beside `headers` within the count
    /// and size bounds.
    pub(crate) fn has_room_for(
        &self,
        headers: &BTreeMap<String, String>,
        name: &str,
        value: &str,
    ) -> bool {
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        headers.len() < self.max_headers
            && bytes + name.len() + value.len() <= self.max_header_bytes
    }

    /// Check header count and size: over either bound is `VALIDATION`.
    pub fn check_headers(&self, headers: &BTreeMap<String, String>) -> Result<()> {
        if headers.len() > self.max_headers {
            return Err(Error::validation(format!(
                "{} headers; at most {} are allowed",
                headers.len(),
                self.max_headers
            )));
        }
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.max_header_bytes {
            return Err(Error::validation(format!(
                "headers take {bytes} bytes; at most {} are allowed",
                self.max_header_bytes
            )));
        }
        if let Some(k) = headers.keys().find(|k| k.is_empty() || has_control(k)) {
            return Err(Error::validation(format!(
                "header name {k:?} is empty or has control characters"
            )));
        }
        Ok(())
    }
}

/// One message as stored and delivered: the fields of DESIGN.md §3.
///
/// Envelopes are made by the bus at publish (from a [`Message`](crate::Message))
/// or decoded from the wire; the fields are read through accessors.
///
/// ```
/// use herald::Envelope;
/// let json = r#"{"id":"01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a80","time":"2024-11-27T19:17:24.474Z",
///   "source":"billing","kind":"event","topic":"invoice.paid",
///   "correlation_id":"01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a81","payload":{"amount":12}}"#;
/// let env = Envelope::from_json(json.as_bytes()).unwrap();
/// assert_eq!(env.topic().as_str(), "invoice.paid");
/// assert_eq!(env.attempt(), 1);
/// assert_eq!(env.idempotency_key(), env.id().to_string());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub(crate) id: Uuid,
    pub(crate) source: Arc<str>,
    pub(crate) kind: Kind,
    pub(crate) topic: Topic,
    pub(crate) seq: Option<u64>,
    /// Where a store that partitions topics kept it (not part of the event).
    pub(crate) partition: Option<u32>,
    pub(crate) key: Option<String>,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) priority: Priority,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) content_type: Cow<'static, str>,
    pub(crate) schema_version: Option<String>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) attempt: u32,
    pub(crate) payload: Payload,
    /// When `Bus::publish` took it, in this process (for fan-out and
    /// end-to-end latency); not part of the event.
    pub(crate) published_at: PublishedAt,
}

impl Envelope {
    /// A fresh envelope (new v7 id, correlation = id, defaults elsewhere) on
    /// an already validated topic.
    pub(crate) fn new_unchecked(
        source: &Arc<str>,
        kind: Kind,
        topic: Topic,
        payload: Payload,
    ) -> Envelope {
        let id = Uuid::now_v7();
        Envelope {
            id,
            source: source.clone(),
            kind,
            topic,
            seq: None,
            partition: None,
            key: None,
            correlation_id: id,
            causation_id: None,
            idempotency_key: None,
            priority: Priority::Normal,
            headers: BTreeMap::new(),
            content_type: Cow::Borrowed(JSON_CONTENT_TYPE),
            schema_version: None,
            expires_at: None,
            attempt: 1,
            payload,
            published_at: Default::default(),
        }
    }

    /// The UUID v7 id.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// Creation time, taken from the id (millisecond precision).
    pub fn timestamp(&self) -> DateTime<Utc> {
        uuid_time(&self.id)
    }
    /// The producing service.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// What the message is for.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
    /// The per-topic sequence, assigned by the bus (`None` before publish and on
    /// commands, which are not appended to a topic).
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }
    /// The partition a store that partitions topics (Kafka) kept the event
    /// in, on a delivered or replayed event (its `seq` counts in that
    /// partition); `None` elsewhere. A fact of the store, never a header,
    /// and not part of the event: publishing it again does not carry it.
    pub fn partition(&self) -> Option<u32> {
        self.partition
    }
    /// The partition/ordering key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// The originating request; never empty.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }
    /// The id of the message that caused this one.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }
    /// The dedupe key: the one set at publish, or the id.
    pub fn idempotency_key(&self) -> Cow<'_, str> {
        match &self.idempotency_key {
            Some(k) => Cow::Borrowed(k),
            None => Cow::Owned(self.id.to_string()),
        }
    }
    /// The dedupe key as set at publish, `None` when it defaults to the id.
    pub fn explicit_idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// Delivery priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// Headers (W3C `traceparent`, `tracestate` and others travel here).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
    /// One header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// The payload's content type (default `application/json`).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    /// The payload's schema version, when the producer set one.
    pub fn schema_version(&self) -> Option<&str> {
        self.schema_version.as_deref()
    }
    /// When the message stops being deliverable.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// Whether the message is past its `expires_at` at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
    /// Delivery attempt, 1-based.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The body.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// A new message with this one's content, for replaying a dead letter:
    /// new id, no seq, attempt 1, no idempotency key, a header naming the
    /// original and one counting the replays.
    pub(crate) fn replayed(&self) -> Envelope {
        let mut again = self.clone();
        again.id = Uuid::now_v7();
        again.seq = None;
        again.partition = None;
        again.attempt = 1;
        again.idempotency_key = None;
        again
            .headers
            .insert(REPLAY_OF_HEADER.to_owned(), self.id.to_string());
        again
            .headers
            .insert(REPLAYS_HEADER.to_owned(), (replays(self) + 1).to_string());
        again
    }

    /// This envelope with `seq` set: what a transport does when it appends.
    pub fn with_seq(mut self, seq: u64) -> Envelope {
        self.seq = Some(seq);
        self
    }

    /// This envelope with `partition` set: what a transport that partitions
    /// topics does when it reads an event.
    pub fn with_partition(mut self, partition: u32) -> Envelope {
        self.partition = Some(partition);
        self
    }

    /// This envelope with `attempt` set: what a transport does when it
    /// redelivers (attempts count from 1).
    pub fn with_attempt(mut self, attempt: u32) -> Envelope {
        self.attempt = attempt.max(1);
        self
    }

    /// Decode the payload into `T` (a `VALIDATION` error when it does not fit).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.payload.decode()
    }

    /// Check the envelope against `limits`: header bounds (`VALIDATION`) and
    /// payload size (`BACKPRESSURE`).
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        limits.check_headers(&self.headers)?;
        if let Some(t) = self.expires_at.filter(|t| !is_wire_time(t)) {
            return Err(Error::validation(format!(
                "`expires_at` {t} of a message to `{}` is outside the years 0000-9999",
                self.topic
            )));
        }
        limits.check_payload(self.topic.as_str(), self.payload.len())?;
        // Raw bytes under a JSON content type must be JSON, or the envelope
        // cannot be encoded: refuse them here, not at a store's encode. The
        // check is the encoder's own parse (`&RawValue`, which checks that
        // strings are UTF-8; `IgnoredAny` skips a string without looking).
        if let Payload::Bytes(b) = &self.payload {
            if is_json_content_type(&self.content_type)
                && !b.is_empty()
                && serde_json::from_slice::<&RawValue>(b).is_err()
            {
                return Err(Error::validation(format!(
                    "the payload of a message to `{}` is not JSON but its content type is {:?}; \
                     set a content type for raw bytes",
                    self.topic, self.content_type
                )));
            }
        }
        Ok(())
    }

    /// Encode as wire-format v1 JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::internal(format!("encode envelope: {e}")).with_source(e))
    }

    /// Decode wire-format v1 JSON and validate it against the default [`Limits`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Self::from_json_with(bytes, &Limits::default())
    }

    /// Decode an envelope a store kept: validated when it was published
    /// (perhaps under raised limits), so only [`Limits::WIDEST`] applies.
    pub fn from_stored(bytes: &[u8]) -> Result<Self> {
        Self::from_json_with(bytes, &Limits::WIDEST)
    }

    /// Decode wire-format v1 JSON and validate it against `limits`.
    pub fn from_json_with(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let wire: WireEnvelope = serde_json::from_slice(bytes)
            .map_err(|e| Error::validation(format!("invalid envelope: {e}")).with_source(e))?;
        let env = Envelope::try_from(wire)?;
        env.validate(limits)?;
        Ok(env)
    }
}

/// Whether `content_type` means the payload is JSON.
pub fn is_json_content_type(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case(JSON_CONTENT_TYPE) || base.to_ascii_lowercase().ends_with("+json")
}

pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub(crate) fn uuid_time(id: &Uuid) -> DateTime<Utc> {
    let ms = id
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(0);
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whether [`format_time`] writes `t` as RFC 3339, which has four-digit
/// years only (chrono writes others with a sign, which no parser reads).
pub(crate) fn is_wire_time(t: &DateTime<Utc>) -> bool {
    (0..=9999).contains(&t.year())
}

/// A time as the wire carries it: RFC 3339, in UTC, to the millisecond
/// (what [`format_time`] writes, so a decoded time is encoded as it was
/// read), in the years 0000-9999 (so it can be written again at all).
pub(crate) fn parse_time(what: &str, s: &str) -> Result<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| Error::validation(format!("{what} {s:?} is not RFC 3339: {e}")))?
        .with_timezone(&Utc)
        .trunc_subsecs(3);
    if !is_wire_time(&t) {
        return Err(Error::validation(format!(
            "{what} {s:?} is outside the years 0000-9999 in UTC"
        )));
    }
    Ok(t)
}

/// Check a short free-text field: non-empty, bounded, no control characters.
pub(crate) fn check_text(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN || has_control(value) {
        return Err(Error::validation(format!(
            "`{field}` must be 1-{MAX_FIELD_LEN} bytes without control characters, got {value:?}"
        )));
    }
    Ok(())
}

const UUID7_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$";
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const TEXT_PATTERN: &str = "^[^\\x00-\\x1f\\x7f]+$";
const TIME_PATTERN: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$";
const TOPIC_PATTERN: &str = "^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$";

/// The wire form of an envelope as the decoder reads it; `schema/envelope.v1.json`
/// is generated from this type.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(
    title = "herald envelope v1",
    description = "One herald message. Unknown top-level fields are accepted and ignored."
)]
pub struct WireEnvelope {
    /// UUID v7, set at publish; carries the creation time.
    #[schemars(regex(pattern = UUID7_PATTERN))]
    pub id: Uuid,
    /// Creation time, RFC 3339, equal to the id's time (milliseconds).
    #[schemars(regex(pattern = TIME_PATTERN))]
    pub time: String,
    /// The producing service.
    #[schemars(length(min = 1, max = 1024), regex(pattern = TEXT_PATTERN))]
    pub source: String,
    /// `event`, `command`, `response` or `intent`.
    pub kind: Kind,
    /// Lowercase dot-separated segments of `[a-z0-9_-]`.
    #[schemars(with = "String", length(min = 1, max = 255), regex(pattern = TOPIC_PATTERN))]
    pub topic: Topic,
    /// Per-topic sequence assigned by the bus, from 1.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub seq: Option<u64>,
    /// Partition/ordering key.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024), regex(pattern = TEXT_PATTERN))]
    pub key: Option<String>,
    /// The originating request.
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub correlation_id: Uuid,
    /// The id of the message that caused this one.
    #[serde(default)]
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub causation_id: Option<Uuid>,
    /// Dedupe key; defaults to `id`.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024), regex(pattern = TEXT_PATTERN))]
    pub idempotency_key: Option<String>,
    /// Delivery priority.
    #[serde(default)]
    pub priority: Priority,
    /// String headers (`traceparent`, `tracestate`, …), at most 64 by default.
    #[serde(default)]
    #[schemars(extend("maxProperties" = DEFAULT_MAX_HEADERS))]
    pub headers: BTreeMap<String, String>,
    /// Payload content type; JSON unless it says otherwise.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024), regex(pattern = TEXT_PATTERN))]
    pub content_type: Option<String>,
    /// Payload schema version.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024), regex(pattern = TEXT_PATTERN))]
    pub schema_version: Option<String>,
    /// After this time the message is dead-lettered with reason `expired`.
    #[serde(default)]
    #[schemars(regex(pattern = TIME_PATTERN))]
    pub expires_at: Option<String>,
    /// Delivery attempt, 1-based.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub attempt: Option<u32>,
    /// The body: JSON, or a base64 string for non-JSON content types.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub payload: Option<Box<RawValue>>,
}

impl TryFrom<WireEnvelope> for Envelope {
    type Error = Error;

    fn try_from(w: WireEnvelope) -> Result<Self> {
        if w.id.get_version_num() != 7 {
            return Err(Error::validation(format!("`id` {} is not a UUID v7", w.id)));
        }
        let time = parse_time("`time`", &w.time)?;
        if time.timestamp_millis() != uuid_time(&w.id).timestamp_millis() {
            return Err(Error::validation(format!(
                "`time` {} differs from the time in `id` ({})",
                w.time,
                format_time(&uuid_time(&w.id))
            )));
        }
        check_text("source", &w.source)?;
        if w.seq == Some(0) {
            return Err(Error::validation("`seq` starts at 1"));
        }
        if w.attempt == Some(0) {
            return Err(Error::validation("`attempt` starts at 1"));
        }
        for (field, v) in [
            ("key", &w.key),
            ("idempotency_key", &w.idempotency_key),
            ("content_type", &w.content_type),
            ("schema_version", &w.schema_version),
        ] {
            if let Some(v) = v {
                check_text(field, v)?;
            }
        }
        let expires_at = w
            .expires_at
            .map(|s| parse_time("`expires_at`", &s))
            .transpose()?;
        let content_type: Cow<'static, str> = match w.content_type {
            Some(c) if c != JSON_CONTENT_TYPE => Cow::Owned(c),
            _ => Cow::Borrowed(JSON_CONTENT_TYPE),
        };
        let json = is_json_content_type(&content_type);
        let payload = match w.payload {
            None if json => Payload::null(),
            // Raw bytes' `null` is no bytes: JSON `null` here would be
            // encoded as the base64 of the text `null`, four bytes out of none.
            None => Payload::bytes(Vec::new()),
            Some(raw) if json => Payload::Json(Arc::from(raw)),
            Some(raw) => {
                let text: String = serde_json::from_str(raw.get()).map_err(|_| {
                    Error::validation(format!(
                        "payload with content type {content_type:?} must be a base64 string"
                    ))
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| Error::validation(format!("payload is not valid base64: {e}")))?;
                Payload::bytes(bytes)
            }
        };
        Ok(Envelope {
            id: w.id,
            source: Arc::from(w.source),
            kind: w.kind,
            topic: w.topic,
            seq: w.seq,
            partition: None,
            key: w.key,
            correlation_id: w.correlation_id,
            causation_id: w.causation_id,
            idempotency_key: w.idempotency_key,
            priority: w.priority,
            headers: w.headers,
            content_type,
            schema_version: w.schema_version,
            expires_at,
            attempt: w.attempt.unwrap_or(1),
            payload,
            published_at: Default::default(),
        })
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    id: &'a Uuid,
    time: String,
    source: &'a str,
    kind: Kind,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    correlation_id: &'a Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    priority: Priority,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    content_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    attempt: u32,
    payload: PayloadOut<'a>,
}

enum PayloadOut<'a> {
    Json(&'a RawValue),
    Base64(&'a [u8]),
}

impl Serialize for PayloadOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PayloadOut::Json(raw) => raw.serialize(s),
            PayloadOut::Base64(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let json_ct = is_json_content_type(&self.content_type);
        let payload = match (&self.payload, json_ct) {
            (Payload::Json(raw), true) => PayloadOut::Json(raw),
            (Payload::Json(raw), false) => PayloadOut::Base64(raw.get().as_bytes()),
            (Payload::Bytes(b), false) => PayloadOut::Base64(b),
            (Payload::Bytes(b), true) => {
                let raw: &RawValue = serde_json::from_slice(if b.is_empty() { b"null" } else { b })
                    .map_err(|_| {
                        serde::ser::Error::custom(
                            "payload bytes are not JSON but the content type says JSON",
                        )
                    })?;
                return self.wire_out(PayloadOut::Json(raw)).serialize(s);
            }
        };
        self.wire_out(payload).serialize(s)
    }
}

impl Envelope {
    fn wire_out<'a>(&'a self, payload: PayloadOut<'a>) -> WireOut<'a> {
        WireOut {
            id: &self.id,
            time: format_time(&self.timestamp()),
            source: &self.source,
            kind: self.kind,
            topic: self.topic.as_str(),
            seq: self.seq,
            key: self.key.as_deref(),
            correlation_id: &self.correlation_id,
            causation_id: self.causation_id.as_ref(),
            idempotency_key: self.idempotency_key.as_deref(),
            priority: self.priority,
            headers: &self.headers,
            content_type: &self.content_type,
            schema_version: self.schema_version.as_deref(),
            expires_at: self.expires_at.as_ref().map(format_time),
            attempt: self.attempt,
            payload,
        }
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = WireEnvelope::deserialize(d)?;
        Envelope::try_from(wire).map_err(serde::de::Error::custom)
    }
}

/// Header a replayed message carries: the id of the dead-lettered original.
pub const REPLAY_OF_HEADER: &str = "herald-replay-of";
/// Header a replayed message carries: how many times it has been replayed.
pub const REPLAYS_HEADER: &str = "herald-replays";

/// How many times `envelope` was replayed from the dead letters.
pub fn replays(envelope: &Envelope) -> u32 {
    envelope
        .header(REPLAYS_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The in-process publish instant of an envelope: set by `Bus::publish` when
/// instrumented, never serialized, and equal to any other (it is not part
/// of the event).
#[derive(Clone, Copy, Default)]
pub(crate) struct PublishedAt(Option<std::time::Instant>);

impl PublishedAt {
    pub(crate) fn now() -> PublishedAt {
        PublishedAt(Some(std::time::Instant::now()))
    }

    pub(crate) fn get(&self) -> Option<std::time::Instant> {
        self.0
    }
}

impl PartialEq for PublishedAt {
    fn eq(&self, _: &PublishedAt) -> bool {
        true
    }
}

impl std::fmt::Debug for PublishedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The schema test's reference envelope, minimal, with `patch` applied.
    fn wire(patch: Value) -> Vec<u8> {
        let mut env = json!({
            "id": "01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a80",
            "time": "2024-11-27T19:17:24.474Z",
            "source": "billing",
            "kind": "event",
            "topic": "invoice.paid",
            "correlation_id": "01936f0e-8b7a-7cc2-9a3e-2f1d5c6b7a81",
        });
        for (k, v) in patch.as_object().unwrap() {
            env[k] = v.clone();
        }
        serde_json::to_vec(&env).unwrap()
    }

    /// Decode `bytes`, and check that its encoding decodes to it again.
    fn round_trip(bytes: &[u8]) -> Envelope {
        let env = Envelope::from_json(bytes).unwrap();
        let json = env.to_json().unwrap();
        let again = Envelope::from_json(&json).unwrap();
        assert_eq!(again, env, "{}", String::from_utf8_lossy(&json));
        env
    }

    // Found by fuzz/ (target `envelope`): a raw-bytes envelope without a
    // payload was read as JSON `null`, written as the base64 of the text
    // `null`, and read back as those four bytes.
    #[test]
    fn no_payload_under_a_raw_content_type_is_no_bytes() {
        for payload in [None, Some(Value::Null)] {
            let mut patch = json!({"content_type": "application/octet-stream"});
            if let Some(p) = payload {
                patch["payload"] = p;
            }
            let env = round_trip(&wire(patch));
            assert_eq!(env.payload(), &Payload::bytes(Vec::new()));
            assert!(env.payload().is_null());
        }
        assert_eq!(round_trip(&wire(json!({}))).payload(), &Payload::null());
    }

    // Found by fuzz/ (target `envelope`): `expires_at` was kept to the
    // nanosecond but written to the millisecond, so an envelope read back
    // from its own encoding differed.
    #[test]
    fn times_are_read_to_the_millisecond_the_wire_writes() {
        let env = round_trip(&wire(json!({
            "time": "2024-11-27T19:17:24.474999Z",
            "expires_at": "2030-01-01T12:34:56.7879+02:00",
        })));
        let expires = env.expires_at().unwrap();
        assert_eq!(format_time(&expires), "2030-01-01T10:34:56.787Z");
        // A leap second survives too.
        round_trip(&wire(json!({"expires_at": "2016-12-31T23:59:60.5Z"})));
    }

    // Found writing fuzz/'s round-trip check: in UTC a time may fall outside
    // RFC 3339's years 0000-9999, which chrono writes with a sign
    // (`+10000-…`) that no parser reads, so the envelope's own encoding
    // was refused (a store could not read back what it had accepted).
    #[test]
    fn times_outside_the_years_0000_to_9999_in_utc_are_refused() {
        for patch in [
            json!({"expires_at": "9999-12-31T23:59:59.999-01:00"}),
            json!({"expires_at": "0000-01-01T00:00:00.000+01:00"}),
            // An id in the first millisecond of the year 10000 (UTC).
            json!({
                "id": "e677d21f-dc00-7000-8000-000000000000",
                "time": "9999-12-31T23:00:00.000-01:00",
            }),
        ] {
            let err = Envelope::from_json(&wire(patch.clone())).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::Validation, "{patch}: {err}");
        }
        round_trip(&wire(json!({"expires_at": "9999-12-31T23:59:59.999Z"})));
        round_trip(&wire(json!({"expires_at": "0000-01-01T00:00:00.000Z"})));
    }
}

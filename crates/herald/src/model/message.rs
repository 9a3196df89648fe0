//! Outgoing messages: what a producer hands to `Bus::publish`.
//!
//! Owns [`Message`] (a builder for everything a producer may set) and the
//! [`Publish`] trait that turns a message, a typed [`Event`](crate::Event) or
//! an existing [`Envelope`] into the envelope the bus appends. The bus supplies
//! what producers do not: id, time, source, and the correlation inherited from
//! the current [`Context`](crate::model::context::Context).
//!
//! Validation of topic and fields happens here, at publish, so a bad message is
//! refused before anything is appended. Size limits are checked by the bus.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::model::context::Context;
use crate::model::envelope::{check_text, is_json_content_type, Envelope, Kind, Priority};
use crate::model::error::Result;
use crate::model::payload::{Payload, JSON_CONTENT_TYPE, OCTET_STREAM};
use crate::model::topic::Topic;

/// An outgoing message: a topic, a payload and optional fields.
///
/// A single `Message` is an `IntoIterator` of itself, so `publish` takes one
/// message or many.
///
/// ```
/// use herald::{Message, Priority};
/// let msg = Message::json("user.created", &serde_json::json!({"id": 1}))
///     .unwrap()
///     .key("user-1")
///     .priority(Priority::High)
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(msg.topic_name(), "user.created");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a message does nothing until it is published"]
pub struct Message {
    topic: Cow<'static, str>,
    payload: Payload,
    id: Option<Uuid>,
    kind: Kind,
    key: Option<String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    idempotency_key: Option<String>,
    priority: Priority,
    headers: BTreeMap<String, String>,
    content_type: Option<String>,
    schema_version: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

impl Message {
    /// A message with `payload` on `topic` (the topic is validated at publish).
    pub fn new(topic: impl Into<Cow<'static, str>>, payload: Payload) -> Self {
        Message {
            topic: topic.into(),
            payload,
            id: None,
            kind: Kind::Event,
            key: None,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            priority: Priority::Normal,
            headers: BTreeMap::new(),
            content_type: None,
            schema_version: None,
            expires_at: None,
        }
    }

    /// A message whose payload is `value` serialized as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(
        topic: impl Into<Cow<'static, str>>,
        value: &T,
    ) -> Result<Self> {
        Ok(Message::new(topic, Payload::json(value)?))
    }

    /// The topic name as given.
    pub fn topic_name(&self) -> &str {
        &self.topic
    }
    /// Set the message's id (default: a new UUIDv7 at publish), for a
    /// caller that must know it before publishing, as `herald serve` does
    /// to answer with each message's id and `seq`. The id is the message's
    /// identity, and the default dedupe key: two messages published with
    /// one id are one message sent twice.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use futures_util::StreamExt;
    /// use herald::{Bus, Message};
    /// let bus = Bus::memory();
    /// let mut sub = bus.subscribe_raw("orders.placed").await?;
    /// let id = uuid::Uuid::now_v7();
    /// bus.publish(Message::json("orders.placed", &1)?.id(id)).await?;
    /// assert_eq!(sub.next().await.unwrap()?.id(), id);
    /// # Ok(()) }
    /// ```
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }
    /// Set the kind (default [`Kind::Event`]).
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    /// Set the ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Set the correlation id (default: the current context's, else a new one).
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }
    /// Set the causation id (default: the id of the message being handled).
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
    /// Set the dedupe key (default: the envelope id).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    /// Set the priority.
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }
    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
    /// Set the payload content type. The default follows the payload:
    /// `application/json` for [`Payload::json`] and the other JSON
    /// constructors, `application/octet-stream` for [`Payload::bytes`]. Bytes that
    /// hold JSON text travel as JSON only under a JSON content type given
    /// here.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use futures_util::StreamExt;
    /// use herald::{Bus, Message, Payload};
    /// let bus = Bus::memory();
    /// let mut sub = bus.subscribe_raw("blobs.stored").await?;
    /// bus.publish(Message::new("blobs.stored", Payload::bytes(vec![0u8, 0xff]))).await?;
    /// bus.publish(Message::new("blobs.stored", Payload::bytes(&b"[1]"[..])).content_type("application/json")).await?;
    /// let raw = sub.next().await.unwrap()?;
    /// assert_eq!(raw.content_type(), "application/octet-stream");
    /// let json = sub.next().await.unwrap()?;
    /// assert_eq!(json.payload().decode::<Vec<u8>>()?, [1]);
    /// # Ok(()) }
    /// ```
    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }
    /// Set the payload schema version.
    pub fn schema_version(mut self, v: impl Into<String>) -> Self {
        self.schema_version = Some(v.into());
        self
    }
    /// Set the expiry: past it the message is dead-lettered as `expired`.
    pub fn expires_at(mut self, t: DateTime<Utc>) -> Self {
        self.expires_at = Some(t);
        self
    }

    pub(crate) fn into_envelope(self, source: &Arc<str>) -> Result<Envelope> {
        let topic = Topic::new(&*self.topic)?;
        for (field, v) in [
            ("key", &self.key),
            ("idempotency_key", &self.idempotency_key),
            ("content_type", &self.content_type),
            ("schema_version", &self.schema_version),
        ] {
            if let Some(v) = v {
                check_text(field, v)?;
            }
        }
        let ctx = Context::current();
        let id = self.id.unwrap_or_else(Uuid::now_v7);
        let correlation_id = self
            .correlation_id
            .or(ctx.map(|c| c.correlation_id()))
            .unwrap_or(id);
        let causation_id = self.causation_id.or(ctx.and_then(|c| c.message_id()));
        let content_type = match (self.content_type, &self.payload) {
            (Some(c), _) if c == JSON_CONTENT_TYPE => Cow::Borrowed(JSON_CONTENT_TYPE),
            (Some(c), _) => Cow::Owned(c),
            (None, Payload::Json(_)) => Cow::Borrowed(JSON_CONTENT_TYPE),
            (None, Payload::Bytes(_)) => Cow::Borrowed(OCTET_STREAM),
        };
        let payload = wire_form(self.payload, is_json_content_type(&content_type));
        Ok(Envelope {
            id,
            source: source.clone(),
            kind: self.kind,
            topic,
            seq: None,
            partition: None,
            key: self.key,
            correlation_id,
            causation_id,
            idempotency_key: self.idempotency_key,
            priority: self.priority,
            headers: self.headers,
            content_type,
            schema_version: self.schema_version,
            // The wire's precision, so a stored copy equals the original.
            expires_at: self.expires_at.map(|t| t.trunc_subsecs(3)),
            attempt: 1,
            payload,
            published_at: Default::default(),
        })
    }
}

/// `payload` as the envelope decoder reads it back (so a stored copy equals
/// the original): under a JSON content type, bytes that are JSON are that
/// JSON (no bytes are `null`; bytes that are not JSON stay, for `validate`
/// to refuse); under another content type, JSON is its text's bytes (`null`,
/// no payload, is no bytes, not the four of the text `null`).
fn wire_form(payload: Payload, json: bool) -> Payload {
    match payload {
        Payload::Bytes(b) if json && b.is_empty() => Payload::null(),
        Payload::Bytes(b) if json => match serde_json::from_slice::<&RawValue>(&b) {
            Ok(raw) => Payload::Json(Arc::from(raw.to_owned())),
            Err(_) => Payload::Bytes(b),
        },
        Payload::Json(raw) if !json => match raw.get() {
            "null" => Payload::bytes(Vec::new()),
            text => Payload::bytes(text.as_bytes().to_vec()),
        },
        p => p,
    }
}

impl IntoIterator for Message {
    type Item = Message;
    type IntoIter = std::iter::Once<Message>;
    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self)
    }
}

/// What publishing one message gave it: its id and its `seq` in its topic
/// (see [`Bus::publish_receipts`](crate::Bus::publish_receipts)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message's id: the one it was given with
    /// [`Message::id`], else a new UUIDv7.
    pub id: Uuid,
    /// Its `seq` in its topic. A duplicate (its idempotency key seen within
    /// the dedupe window) was not appended: its receipt gives its own id
    /// and the first one's `seq`.
    pub seq: u64,
}

/// Anything `Bus::publish` accepts as one item: a [`Message`], an [`Envelope`]
/// (re-published as it is, keeping its id, so dedupe applies), or a typed
/// [`Event`](crate::Event).
pub trait Publish {
    /// Turn `self` into the envelope to append; `source` is the bus's.
    fn into_envelope(self, source: &Arc<str>) -> Result<Envelope>;
}

impl Publish for Message {
    fn into_envelope(self, source: &Arc<str>) -> Result<Envelope> {
        Message::into_envelope(self, source)
    }
}

impl Publish for Envelope {
    fn into_envelope(mut self, _source: &Arc<str>) -> Result<Envelope> {
        self.seq = None;
        self.attempt = 1;
        Ok(self)
    }
}

impl IntoIterator for Envelope {
    type Item = Envelope;
    type IntoIter = std::iter::Once<Envelope>;
    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self)
    }
}

impl<E: crate::Event> Publish for E {
    fn into_envelope(self, source: &Arc<str>) -> Result<Envelope> {
        self.to_message()?.into_envelope(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn correlation_comes_from_the_context_or_is_fresh() {
        let src: Arc<str> = Arc::from("test");
        let env = Message::new("a.b", Payload::null())
            .into_envelope(&src)
            .unwrap();
        assert_eq!(env.correlation_id(), env.id());
        assert_eq!(env.causation_id(), None);

        let ctx = Context::new(Uuid::now_v7(), Some(Uuid::now_v7()));
        let env = ctx
            .scope(async { Message::new("a.b", Payload::null()).into_envelope(&src) })
            .await
            .unwrap();
        assert_eq!(env.correlation_id(), ctx.correlation_id());
        assert_eq!(env.causation_id(), ctx.message_id());
    }

    #[test]
    fn raw_bytes_under_a_json_content_type_must_be_json() {
        let src: Arc<str> = Arc::from("test");
        let limits = crate::Limits::default();
        let envelope = |b: &'static [u8]| {
            Message::new("a.b", Payload::bytes(b))
                .content_type(JSON_CONTENT_TYPE)
                .into_envelope(&src)
                .unwrap()
        };
        let err = envelope(b"\x00\x01").validate(&limits).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Validation, "{err}");
        envelope(b"{\"a\":1}").validate(&limits).unwrap();
        // Found by fuzz/ (`ws_frame`): a JSON string of bytes that are not
        // UTF-8 passed this check, which skipped strings unread, and the
        // envelope then failed to encode (`INTERNAL` at the store).
        let err = envelope(b"\"\xff\"").validate(&limits).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Validation, "{err}");
    }

    // Issue 22 item 20: bytes without a content type were JSON's, so any
    // bytes that were not JSON failed to publish with `VALIDATION`.
    #[test]
    fn raw_bytes_are_octet_stream_unless_told_otherwise() {
        let src: Arc<str> = Arc::from("test");
        for bytes in [&b"\x00\xff"[..], b"{\"a\":1}", b""] {
            let env = Message::new("a.b", Payload::bytes(bytes))
                .into_envelope(&src)
                .unwrap();
            env.validate(&crate::Limits::default()).unwrap();
            assert_eq!(env.content_type(), OCTET_STREAM);
            assert_eq!(env.payload(), &Payload::bytes(bytes));
        }
        let json = Message::json("a.b", &1)
            .unwrap()
            .into_envelope(&src)
            .unwrap();
        assert_eq!(json.content_type(), JSON_CONTENT_TYPE);
    }

    #[test]
    fn bad_topics_and_fields_are_refused() {
        let src: Arc<str> = Arc::from("test");
        assert!(Message::new("Bad", Payload::null())
            .into_envelope(&src)
            .is_err());
        assert!(Message::new("a", Payload::null())
            .key("")
            .into_envelope(&src)
            .is_err());
        assert!(Message::new("a", Payload::null())
            .idempotency_key("x\ny")
            .into_envelope(&src)
            .is_err());
    }

    /// `m`'s envelope, checked to equal what a store reads back from its
    /// encoding.
    fn stored(m: Message) -> Envelope {
        let env = m.into_envelope(&Arc::from("test")).unwrap();
        env.validate(&crate::Limits::default()).unwrap();
        let json = env.to_json().unwrap();
        assert_eq!(Envelope::from_stored(&json).unwrap(), env);
        env
    }

    // Found by fuzz/ (targets `ws_frame`, `cloudevents`: `payload_base64:
    // ""` under the default content type): in memory the payload was no
    // bytes under JSON while a store read back JSON `null`; likewise JSON
    // `null` under a raw content type came back as the four bytes `null`.
    #[test]
    fn the_payload_takes_the_form_its_content_type_gives_it_on_the_wire() {
        let raw = |p: Payload| Message::new("a.b", p).content_type("application/octet-stream");
        assert_eq!(
            stored(raw(Payload::null())).payload(),
            &Payload::bytes(Vec::new())
        );
        let text = stored(raw(Payload::json(&serde_json::json!({"a": 1})).unwrap()));
        assert_eq!(text.payload(), &Payload::bytes(&b"{\"a\":1}"[..]));
        let json = |p: Payload| stored(Message::new("a.b", p).content_type(JSON_CONTENT_TYPE));
        assert_eq!(json(Payload::bytes(Vec::new())).payload(), &Payload::null());
        assert_eq!(
            json(Payload::bytes(&b" [1, 2] "[..])).payload(),
            &Payload::from_json_text("[1, 2]").unwrap()
        );
    }

    // The publish side of what fuzz/ found in the decoder: an expiry to the
    // nanosecond was stored to the millisecond, so the stored copy
    // differed; and one past the year 9999 was encoded as `+10000-…`,
    // which no store could read back.
    #[test]
    fn the_expiry_is_kept_as_the_wire_keeps_it() {
        let t = DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap();
        let env = stored(Message::new("a.b", Payload::null()).expires_at(t));
        assert_eq!(
            env.expires_at().unwrap().timestamp_subsec_nanos(),
            123_000_000
        );
        let far = DateTime::from_timestamp_millis(253_402_300_800_000).unwrap();
        let err = Message::new("a.b", Payload::null())
            .expires_at(far)
            .into_envelope(&Arc::from("test"))
            .unwrap()
            .validate(&crate::Limits::default())
            .unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Validation, "{err}");
    }
}

//! What clients send to publish or call: [`MessageIn`], and how it becomes a
//! `herald::Message`.
//!
//! Owns the request shape shared by HTTP publish, HTTP call and the
//! WebSocket's publish and call frames, with strict decoding (unknown fields
//! are refused, so a typo is an error rather than a silently lost field),
//! and the publish answer. Does not own envelope validation (the bus does
//! that on publish) or body decoding (`extract`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald::{Kind, Message, Payload, Priority};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// How deeply a payload's arrays and objects may nest (serde_json's own
/// recursion limit, so every consumer that decodes it can).
pub const MAX_NESTING: usize = 128;

/// The deepest nesting of arrays and objects in JSON `text`.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One message to publish or call. Only `payload` is usually needed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// The body, any JSON value (default `null`).
    #[schema(value_type = Object)]
    pub payload: Option<Box<RawValue>>,
    /// The body as base64 bytes instead of JSON; its `content_type` is
    /// `application/octet-stream` unless given.
    pub payload_base64: Option<String>,
    /// Ordering key: same-key events reach a group member one at a time, in order.
    pub key: Option<String>,
    /// Dedupe key (default: the new event's id).
    pub idempotency_key: Option<String>,
    /// `event` (default) or `intent`; commands go to the call endpoint.
    #[schema(value_type = Option<String>, example = "event")]
    pub kind: Option<Kind>,
    /// `low`, `normal` (default), `high` or `critical`.
    #[schema(value_type = Option<String>, example = "normal")]
    pub priority: Option<Priority>,
    /// String headers (W3C `traceparent` among them).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The originating request's id (default: a fresh one).
    pub correlation_id: Option<Uuid>,
    /// The id of the message that caused this one.
    pub causation_id: Option<Uuid>,
    /// The payload's content type (default `application/json`).
    pub content_type: Option<String>,
    /// The payload's schema version.
    pub schema_version: Option<String>,
    /// After this time the event is dead-lettered instead of delivered.
    pub expires_at: Option<DateTime<Utc>>,
}

impl MessageIn {
    /// The payload's size in bytes as the limit counts it: the JSON text,
    /// or the bytes the base64 decodes to (padding not counted).
    pub fn payload_len(&self) -> usize {
        match (&self.payload, &self.payload_base64) {
            (Some(p), _) => p.get().len(),
            (None, Some(b)) => base64_decoded_len(b),
            (None, None) => 0,
        }
    }

    /// The message for `topic`. `VALIDATION` when both payload forms are
    /// given or the base64 does not decode.
    pub fn into_message(self, topic: &str) -> Result<Message, ApiError> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "give `payload` or `payload_base64`, not both",
                ))
            }
            (Some(json), None) => {
                let depth = nesting(json.get());
                if depth > MAX_NESTING {
                    return Err(ApiError::validation(format!(
                        "payload nests {depth} levels deep; at most {MAX_NESTING} are allowed"
                    )));
                }
                // The body's parser checked it is JSON: taken as it is.
                Payload::Json(std::sync::Arc::from(json))
            }
            (None, Some(b64)) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| ApiError::validation(format!("payload_base64: {e}")))?;
                Payload::bytes(bytes)
            }
            (None, None) => Payload::null(),
        };
        let mut m = Message::new(topic.to_owned(), payload);
        if let Some(k) = self.kind {
            m = m.kind(k);
        }
        if let Some(k) = self.key {
            m = m.key(k);
        }
        if let Some(k) = self.idempotency_key {
            m = m.idempotency_key(k);
        }
        if let Some(p) = self.priority {
            m = m.priority(p);
        }
        for (name, value) in self.headers {
            m = m.header(name, value);
        }
        if let Some(id) = self.correlation_id {
            m = m.correlation_id(id);
        }
        if let Some(id) = self.causation_id {
            m = m.causation_id(id);
        }
        if let Some(ct) = self.content_type {
            m = m.content_type(ct);
        }
        if let Some(v) = self.schema_version {
            m = m.schema_version(v);
        }
        if let Some(t) = self.expires_at {
            m = m.expires_at(t);
        }
        Ok(m)
    }
}

/// How many bytes standard base64 `text` decodes to (an upper bound when
/// it is malformed, which decoding refuses anyway).
fn base64_decoded_len(text: &str) -> usize {
    let b = text.as_bytes();
    let padding = b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    let full = b.len() / 4 * 3;
    match b.len() % 4 {
        0 => full - padding,
        rest => full + rest * 3 / 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lengths_do_not_count_padding() {
        use base64::Engine;
        for n in 0..40 {
            let text = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
            assert_eq!(base64_decoded_len(&text), n, "{text}");
        }
    }

    #[test]
    fn nesting_counts_brackets_outside_strings() {
        assert_eq!(nesting("1"), 0);
        assert_eq!(nesting(r#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(nesting(r#"["[[[", "\"[[", {}]"#), 2);
    }
}

/// Where a published event landed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// The id given to the message sent. (When its idempotency key was
    /// seen within the dedupe window nothing new is stored: `seq` is the
    /// original event's, which keeps its own id.)
    pub id: Uuid,
    /// Its `seq` in its topic.
    pub seq: u64,
}

/// The answer to a publish.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// The topic.
    pub topic: String,
    /// Each event, in the order sent.
    pub events: Vec<Published>,
}

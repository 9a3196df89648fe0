//! The body of a message.
//!
//! Owns [`Payload`]: JSON text (the default, kept as validated raw JSON so it
//! is never parsed twice) or raw bytes. It knows its size in bytes, which is
//! what the payload limit (DESIGN.md §4.8) is checked against, and decodes into
//! typed values with a `VALIDATION` error instead of a panic.
//!
//! How a payload sits in the JSON envelope is the envelope module's business.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::error::{Error, Result};

/// The default content type of a JSON payload.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The default content type of a [`Payload::bytes`] payload.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// A message body: JSON (default) or raw bytes. Cheap to clone.
///
/// ```
/// use herald::Payload;
/// let p = Payload::json(&serde_json::json!({"id": 7})).unwrap();
/// assert_eq!(p.len(), 8);
/// let v: serde_json::Value = p.decode().unwrap();
/// assert_eq!(v["id"], 7);
/// assert!(Payload::null().is_null());
/// ```
#[derive(Clone)]
pub enum Payload {
    /// JSON text, already validated.
    Json(Arc<RawValue>),
    /// Opaque bytes; travels base64-encoded inside a JSON envelope.
    Bytes(Bytes),
}

impl Payload {
    /// The JSON `null` payload (also what an absent payload decodes to).
    pub fn null() -> Self {
        thread_local! {
            static NULL: Arc<RawValue> = Arc::from(RawValue::from_string("null".into()).expect("null is JSON"));
        }
        NULL.with(|n| Payload::Json(n.clone()))
    }

    /// Serialize `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let raw = serde_json::value::to_raw_value(value).map_err(|e| {
            Error::validation(format!("payload does not serialize: {e}")).with_source(e)
        })?;
        Ok(Payload::Json(Arc::from(raw)))
    }

    /// Take JSON text as it is, after checking that it is JSON.
    pub fn from_json_text(text: impl Into<String>) -> Result<Self> {
        let raw = RawValue::from_string(text.into())
            .map_err(|e| Error::validation(format!("payload is not JSON: {e}")).with_source(e))?;
        Ok(Payload::Json(Arc::from(raw)))
    }

    /// Raw bytes. A message carrying them is `application/octet-stream`
    /// unless [`Message::content_type`](crate::Message::content_type) says
    /// otherwise.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        Payload::Bytes(bytes.into())
    }

    /// Size in bytes: the JSON text length, or the byte count.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Bytes(b) => b.len(),
        }
    }

    /// Whether the payload is empty bytes (JSON payloads are never empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is JSON `null` or empty bytes.
    pub fn is_null(&self) -> bool {
        match self {
            Payload::Json(raw) => raw.get() == "null",
            Payload::Bytes(b) => b.is_empty(),
        }
    }

    /// The bytes: JSON text or the raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Json(raw) => raw.get().as_bytes(),
            Payload::Bytes(b) => b,
        }
    }

    /// Decode into `T`. A payload that does not fit `T` (including `null` for a
    /// type with required fields) is a `VALIDATION` error.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let text: &[u8] = match self {
            Payload::Json(raw) => raw.get().as_bytes(),
            Payload::Bytes(b) if b.is_empty() => b"null",
            Payload::Bytes(b) => b,
        };
        serde_json::from_slice(text).map_err(|e| {
            Error::validation(format!(
                "payload does not decode into {}: {e}",
                std::any::type_name::<T>()
            ))
            .with_source(e)
        })
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Bytes(a), Payload::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Json(raw) => write!(f, "Json({})", raw.get()),
            Payload::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Needs {
        id: u64,
    }

    #[test]
    fn null_and_empty_payloads_are_valid_but_do_not_decode_into_required_fields() {
        for p in [Payload::null(), Payload::bytes(Vec::new())] {
            assert!(p.is_null());
            let err = p.decode::<Needs>().unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::Validation);
            assert_eq!(p.decode::<Option<Needs>>().unwrap().map(|n| n.id), None);
        }
    }

    #[test]
    fn json_text_is_checked() {
        assert!(Payload::from_json_text("{\"a\":1}").is_ok());
        assert!(Payload::from_json_text("{a:1}").is_err());
    }
}

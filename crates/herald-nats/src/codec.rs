//! A JetStream message as a herald envelope.
//!
//! Owns [`envelope`]: the topic from the subject, every other field from the
//! `Herald-*` headers ([`herald::backend::headers`]), `seq` from the stream sequence
//! (the topic's stream numbers its messages), `attempt` from the delivery
//! count; a parked payload's body comes from `payload`. Encoding is
//! `herald::backend::headers::encode` ([`headers_of`], used by `log` and
//! `commands`). It sits on `conn` and `payload`; appending and reading
//! streams are `log`'s.

use async_nats::HeaderMap;
use bytes::Bytes;
use herald::backend::headers::Origin;
use herald::{Envelope, Error, Result};

use crate::conn::Inner;

/// The `source` of a message a plain NATS client published.
pub const PLAIN_SOURCE: &str = "nats";

/// The envelope of a message on `subject` with `headers` and `body`, stored
/// at stream sequence `seq` at `time_ms`, delivered for the `attempt`th time.
pub(crate) async fn envelope(
    inner: &Inner,
    subject: &str,
    headers: Option<&HeaderMap>,
    body: Bytes,
    seq: u64,
    time_ms: i64,
    attempt: u32,
) -> Result<Envelope> {
    let body = crate::payload::fetch(inner, headers, body).await?;
    let topic = inner
        .names
        .topic_of(subject)
        .ok_or_else(|| Error::validation(format!("subject {subject:?} is not a herald topic")))?;
    let pairs = header_pairs(headers).filter(|(name, _)| *name != crate::payload::PAYLOAD_REF);
    let origin = Origin {
        time_ms,
        unique: seq,
        source: PLAIN_SOURCE,
    };
    Ok(
        herald::backend::headers::decode(topic, pairs, body, origin)?
            .with_seq(seq)
            .with_attempt(attempt),
    )
}

/// Milliseconds since the epoch of a server timestamp.
pub(crate) fn millis(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Every (name, value) of `headers`.
pub(crate) fn header_pairs(headers: Option<&HeaderMap>) -> impl Iterator<Item = (&str, &str)> {
    headers.into_iter().flat_map(|h| {
        h.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (AsRef::<str>::as_ref(name), v.as_str()))
        })
    })
}

/// `env` as NATS headers and a body (`herald::backend::headers::encode`).
pub(crate) fn headers_of(env: &Envelope) -> Result<(HeaderMap, Bytes)> {
    let (pairs, body) = herald::backend::headers::encode(env)?;
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(name, value.as_str());
    }
    Ok((headers, body))
}

//! Payloads too large for one NATS message: a claim check.
//!
//! Owns [`park`] and [`fetch`]. The server refuses messages over its
//! `max_payload` (1 MiB by default, the same as herald's payload limit, so
//! a payload at herald's limit never fits beside its headers). Such a body
//! is written first, in chunks, to stream `S_PAYLOADS` (subjects
//! `P.$payload.<id>.<n>`), and the event carries the header
//! `Herald-Payload-Ref: <id> <chunks> <bytes>` and an empty body; readers
//! put the body back together. Chunks are kept as long as the stream's
//! limits say (the default retention's age, else for good): an event whose
//! chunks aged out reads as a `VALIDATION` error. It sits on `conn`;
//! deciding to park while appending is `log`'s, unparking while decoding
//! `codec`'s.

use std::sync::atomic::Ordering;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use herald::{Error, ErrorCode, Result};

use crate::conn::Inner;
use crate::errors;

/// The header naming a parked payload.
pub const PAYLOAD_REF: &str = "Herald-Payload-Ref";

/// Room left for a message's headers and protocol beside a chunk.
const HEADROOM: usize = 8 * 1024;

/// Whether a message of `body` with `headers_len` bytes of headers must be
/// parked, on a server taking `max` bytes.
pub(crate) fn too_large(body: usize, headers_len: usize, max: usize) -> bool {
    body + headers_len + HEADROOM > max
}

/// Write `body` as chunks under a new id; the `Herald-Payload-Ref` value.
pub(crate) async fn park(inner: &Inner, body: &Bytes) -> Result<String> {
    prepare(inner).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let chunk = inner
        .client
        .server_info()
        .max_payload
        .saturating_sub(HEADROOM)
        .max(1024);
    let mut acks = Vec::new();
    for (n, part) in body.chunks(chunk).enumerate() {
        let subject = inner.names.payload_subject(&id, n);
        let ack = inner
            .js
            .publish(subject, Bytes::copy_from_slice(part))
            .await
            .map_err(|e| errors::publish("a large payload", e))?;
        acks.push(ack);
    }
    let chunks = acks.len();
    for ack in acks {
        ack.await
            .map_err(|e| errors::publish("a large payload", e))?;
    }
    Ok(format!("{id} {chunks} {}", body.len()))
}

/// The body of a message: its own, or the parked one its headers name.
pub(crate) async fn fetch(
    inner: &Inner,
    headers: Option<&HeaderMap>,
    body: Bytes,
) -> Result<Bytes> {
    let Some(reference) = headers.and_then(|h| h.get(PAYLOAD_REF)) else {
        return Ok(body);
    };
    let bad = || Error::validation(format!("bad {PAYLOAD_REF} header {:?}", reference.as_str()));
    let mut parts = reference.as_str().split(' ');
    let (Some(id), Some(chunks), Some(len)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (chunks, len): (usize, usize) = (
        chunks.parse().map_err(|_| bad())?,
        len.parse().map_err(|_| bad())?,
    );
    let s = inner
        .js
        .get_stream_no_info(inner.names.payloads_stream())
        .await
        .map_err(|e| errors::nats(ErrorCode::Unavailable, "open the large payloads", e))?;
    let mut out = BytesMut::with_capacity(len.min(64 * 1024 * 1024));
    for n in 0..chunks {
        let subject = inner.names.payload_subject(id, n);
        let part = s
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| Error::validation(format!("the payload {id} is gone (chunk {n}): {e}")))?;
        out.extend_from_slice(&part.payload);
    }
    if out.len() != len {
        return Err(bad());
    }
    Ok(out.freeze())
}

async fn prepare(inner: &Inner) -> Result<()> {
    if inner.payloads_ready.load(Ordering::Acquire) {
        return Ok(());
    }
    let config = stream::Config {
        name: inner.names.payloads_stream(),
        subjects: vec![inner.names.payload_subjects()],
        max_age: inner
            .config
            .retention_policy()
            .of("")
            .age()
            .unwrap_or_default(),
        storage: match inner.config.storage_kind() {
            crate::Storage::File => stream::StorageType::File,
            crate::Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: inner.config.replica_count(),
        allow_direct: true,
        ..Default::default()
    };
    inner
        .js
        .create_or_update_stream(config)
        .await
        .map_err(|e| errors::nats(ErrorCode::Unavailable, "make the large-payload stream", e))?;
    inner.payloads_ready.store(true, Ordering::Release);
    Ok(())
}

//! The topic log: appending to the topic streams and reading them back.
//!
//! Owns [`append`], the making of topic streams from the configuration
//! ([`ensure_stream`]), finding a topic's stream and its last `seq`, and
//! [`read`], a bounded read of any stream. Every topic is a stream of its
//! own whose sequence *is* the topic's `seq`: JetStream numbers a stream's
//! messages from 1 without gaps, so `seq` needs no bookkeeping of herald's,
//! survives retention (a stream's sequence never goes back), and a plain
//! client's publish gets a `seq` like herald's own. Message ↔ envelope is
//! `codec`'s, payloads too large for one message `payload`'s; following
//! streams for subscribers is `tail`'s and `group`'s.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use herald::config::KeylessPartition;
use herald::{Envelope, ErrorCode, Result, Topic};

use crate::conn::Inner;
use crate::errors;

/// Most messages one fetch asks for, so a long read does not overrun the
/// client's buffer.
const FETCH_MAX: usize = 500;

/// Append `batch`, each event to its topic's stream, pipelined: all are
/// sent before the first ack is awaited. Not atomic: JetStream 2.9 has
/// no multi-message transaction, so a failure part-way leaves the
/// events before it appended (a retry with the same idempotency keys
/// appends only the rest).
pub(crate) async fn append(inner: &Inner, batch: Vec<Envelope>) -> Result<Vec<u64>> {
    inner.check_open()?;
    let max = inner.client.server_info().max_payload;
    let mut acks = Vec::with_capacity(batch.len());
    for env in &batch {
        let partitions = ensure_stream(inner, env.topic()).await?;
        let (mut headers, body) = crate::codec::headers_of(env)?;
        let mut size = body.len()
            + crate::codec::header_pairs(Some(&headers))
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        let key = env.idempotency_key();
        size += key.len() + 16;
        let body = if crate::payload::too_large(body.len(), size - body.len(), max) {
            let reference = crate::payload::park(inner, &body).await?;
            headers.insert(crate::payload::PAYLOAD_REF, reference.as_str());
            bytes::Bytes::new()
        } else {
            body
        };
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(key.as_ref())
            .payload(body);
        let id = env.id();
        let by = match (env.key(), inner.config.keyless()) {
            (Some(key), _) => key.as_bytes(),
            (None, KeylessPartition::Spread) => id.as_bytes().as_slice(),
            (None, KeylessPartition::Topic) => env.topic().as_str().as_bytes(),
        };
        let subject = inner
            .names
            .event_subject(env.topic().as_str(), partitions, by);
        let ack = inner
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| errors::publish(env.topic().as_str(), e))?;
        acks.push(ack);
    }
    let mut seqs = Vec::with_capacity(acks.len());
    for (ack, env) in acks.into_iter().zip(&batch) {
        let ack = ack
            .await
            .map_err(|e| errors::publish(env.topic().as_str(), e))?;
        seqs.push(ack.sequence);
    }
    Ok(seqs)
}

/// Create or update `topic`'s stream once per process, and say how many
/// partitions the topic has. Updating is how a stream made before
/// partitions gains their subjects; a stream keeps the partitions it was
/// made with (its description says how many), whatever this process's
/// configuration says.
pub(crate) async fn ensure_stream(inner: &Inner, topic: &Topic) -> Result<u32> {
    if let Some(partitions) = known(inner, topic) {
        return Ok(partitions);
    }
    let retention = inner.config.retention_policy().of(topic.as_str());
    let defaults = inner.stream_defaults();
    // The server refuses a duplicate window longer than the stream keeps
    // events: dedupe covers what the topic still holds.
    let duplicate_window = retention.age().map_or(defaults.duplicate_window, |age| {
        age.min(defaults.duplicate_window)
    });
    let mut config = stream::Config {
        name: inner.names.stream(topic.as_str()),
        subjects: inner.names.stream_subjects(topic.as_str()),
        max_age: retention.age().unwrap_or_default(),
        duplicate_window,
        max_messages: retention
            .events()
            .map_or(-1, |n| n.min(i64::MAX as u64) as i64),
        ..defaults
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("make the stream of `{topic}`"),
            e,
        )
    };
    let partitions = match stream(inner, topic).await? {
        Some(existing) => partitions_of(inner, &existing),
        None => {
            let partitions = inner.config.partition_count();
            config.description = Some(inner.names.stream_description(topic.as_str(), partitions));
            match inner.js.create_stream(config.clone()).await {
                Ok(_) => partitions,
                // Made by another process meanwhile: its count holds.
                Err(e) => match stream(inner, topic).await? {
                    Some(existing) => partitions_of(inner, &existing),
                    None => return Err(unavailable(&e)),
                },
            }
        }
    };
    config.description = Some(inner.names.stream_description(topic.as_str(), partitions));
    inner
        .js
        .create_or_update_stream(config)
        .await
        .map_err(|e| unavailable(&e))?;
    inner
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(topic.clone(), partitions);
    Ok(partitions)
}

/// The partitions of topic stream `s`: as its description says, or for a
/// stream made before partitions, as this process is configured.
pub(crate) fn partitions_of(inner: &Inner, s: &stream::Stream) -> u32 {
    crate::names::partitions_in(s.cached_info().config.description.as_deref())
        .unwrap_or_else(|| inner.config.partition_count())
}

fn known(inner: &Inner, topic: &Topic) -> Option<u32> {
    inner
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(topic)
        .copied()
}

/// The stream of `topic`, `None` when it has none yet.
pub(crate) async fn stream(inner: &Inner, topic: &Topic) -> Result<Option<stream::Stream>> {
    match inner
        .js
        .get_stream(inner.names.stream(topic.as_str()))
        .await
    {
        Ok(s) => Ok(Some(s)),
        Err(e) if errors::is_not_found(&e) => Ok(None),
        Err(e) => Err(errors::nats(
            ErrorCode::Unavailable,
            &format!("read the stream of `{topic}`"),
            e,
        )),
    }
}

/// The highest `seq` of `topic`, `None` before its first event.
pub(crate) async fn last_seq(inner: &Inner, topic: &Topic) -> Result<Option<u64>> {
    Ok(stream(inner, topic)
        .await?
        .map(|s| s.cached_info().state.last_sequence)
        .filter(|&s| s > 0))
}

/// Up to `limit` messages of `stream` from `start` on, no further than the
/// stream reached when the reader was made: an ephemeral pull consumer
/// without acks asks, without waiting, for as many as it has pending (in
/// fetches of up to [`FETCH_MAX`]), and is deleted after.
pub(crate) async fn read(
    inner: &Inner,
    stream: &stream::Stream,
    start: DeliverPolicy,
    limit: usize,
) -> Result<Vec<jetstream::Message>> {
    let name = &stream.cached_info().config.name;
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(ErrorCode::Unavailable, &format!("read stream {name}"), e)
    };
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            deliver_policy: start,
            ack_policy: AckPolicy::None,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
    let mut left = pending.min(limit);
    let mut messages = Vec::with_capacity(left.min(FETCH_MAX));
    let wait = inner.config.timeout();
    while left > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(FETCH_MAX))
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        let before = messages.len();
        while let Some(msg) = tokio::time::timeout(wait, batch.next())
            .await
            .map_err(|_| {
                errors::nats(
                    ErrorCode::Timeout,
                    &format!("read stream {name}"),
                    format!("no message within {wait:?}"),
                )
            })?
        {
            messages.push(msg.map_err(|e| unavailable(&e))?);
        }
        let got = messages.len() - before;
        if got == 0 {
            // Retention took the rest.
            break;
        }
        left = left.saturating_sub(got);
    }
    // One left behind goes when the server finds it idle.
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(messages)
}

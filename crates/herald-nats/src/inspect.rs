//! What operators read off the store: its topics, a topic's events page by
//! page, and each consumer group's offset and lag.
//!
//! Owns [`topics`], [`replay`], [`groups`] and the group records they list
//! groups by ([`record`]; a group's record also keeps where it started
//! when it was made: [`made_at`]). Topics are this store's topic streams with a last
//! sequence. Replay reads a topic stream through an ephemeral pull consumer
//! (no acks) that asks for no more than the stream held when it was made,
//! so it never waits for new events and touches no group. A group is its
//! record — written by each of its leaders when it starts, so a group whose
//! topics have no events yet is listed too — and its durable consumers:
//! on a topic stream, whose sequence is the topic's `seq`, the consumer's
//! ack floor is the group's offset (acks and the terms of dead-lettered
//! events both move it; a consumer starts with its floor just before its
//! start) and its lag is what the consumer has not delivered
//! (`num_pending`) plus what it delivered and nobody settled
//! (`num_ack_pending`: events the leader holds — waiting, deferred by a
//! nack, in flight — or handed back when a leader stepped down). A topic
//! whose consumer the leader has not made yet counts every event it holds
//! as unsettled.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use herald::{
    Envelope, ErrorCode, GroupInfo, GroupTopic, Pattern, Result, StartPosition, SubscribeSpec,
    Topic, TopicInfo,
};
use serde::{Deserialize, Serialize};

use crate::errors;
use crate::store::{is_not_found, Inner};
use crate::tail::{self, Found};

/// Most messages one fetch asks for, so a long read does not overrun the
/// client's buffer.
const FETCH_MAX: usize = 500;

/// A consumer group as its leaders record it.
#[derive(Serialize, Deserialize)]
struct Record {
    group: String,
    /// Its patterns, as `herald::group::patterns_text` writes them.
    patterns: String,
    /// Where the group started when it was made (records written before
    /// herald kept it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<Start>,
}

/// A group's start position in its record.
#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(tag = "at", rename_all = "snake_case")]
enum Start {
    Earliest,
    Latest,
    Seq { seq: u64 },
    Time { ms: i64 },
}

impl From<StartPosition> for Start {
    fn from(start: StartPosition) -> Self {
        match start {
            StartPosition::Earliest => Start::Earliest,
            StartPosition::Latest => Start::Latest,
            StartPosition::Seq(seq) => Start::Seq { seq },
            StartPosition::Time(t) => Start::Time {
                ms: t.timestamp_millis(),
            },
        }
    }
}

impl From<Start> for StartPosition {
    fn from(start: Start) -> Self {
        match start {
            Start::Earliest => StartPosition::Earliest,
            Start::Latest => StartPosition::Latest,
            Start::Seq { seq } => StartPosition::Seq(seq),
            Start::Time { ms } => {
                StartPosition::Time(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
            }
        }
    }
}

/// Every topic with events, by name.
pub(crate) async fn topics(inner: &Inner) -> Result<Vec<TopicInfo>> {
    Ok(topic_streams(inner)
        .await?
        .into_iter()
        .map(|f| TopicInfo::new(f.topic, f.last_seq))
        .collect())
}

/// Up to `limit` events of `topic` from `from` on, in `seq` order.
pub(crate) async fn replay(
    inner: &Inner,
    topic: &Topic,
    from: StartPosition,
    limit: usize,
) -> Result<Vec<Envelope>> {
    let start = match from {
        StartPosition::Latest => return Ok(Vec::new()),
        StartPosition::Seq(0) => DeliverPolicy::All,
        _ => tail::policy(&from),
    };
    let Some(stream) = inner.stream(topic).await? else {
        return Ok(Vec::new());
    };
    let mut events = Vec::new();
    for msg in read(inner, &stream, start, limit).await? {
        let info = msg
            .info()
            .map_err(|e| errors::nats(ErrorCode::Internal, &format!("replay `{topic}`"), e))?;
        let (seq, time_ms) = (info.stream_sequence, crate::codec::millis(info.published));
        let env = crate::codec::envelope(
            inner,
            &msg.subject,
            msg.headers.as_ref(),
            msg.payload.clone(),
            seq,
            time_ms,
            1,
        )
        .await;
        match env {
            // A time is found by the server's receive time; the envelope's
            // own decides, as everywhere.
            Ok(env) if from.admits(&env) => events.push(env),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%topic, seq, error = %e, "replay skips a message herald cannot read");
            }
        }
    }
    Ok(events)
}

/// Every group with a record, by name, with its standing on each topic with
/// events its patterns match.
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>> {
    let registry = match inner.js.get_stream(inner.names.groups_stream()).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(errors::nats(
                ErrorCode::Unavailable,
                "read the group records",
                e,
            ))
        }
    };
    let mut records = Vec::new();
    for msg in read(inner, &registry, DeliverPolicy::All, usize::MAX).await? {
        match serde_json::from_slice::<Record>(&msg.payload) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "skipping a group record herald cannot read")
            }
        }
    }
    records.sort_by(|a, b| a.group.cmp(&b.group));
    let topics = topic_streams(inner).await?;
    let mut list = Vec::with_capacity(records.len());
    for record in records {
        let patterns: Vec<Pattern> = record
            .patterns
            .split_whitespace()
            .map(Pattern::new)
            .collect::<Result<_>>()?;
        let consumer = inner.names.consumer(&record.group);
        let followed = topics
            .iter()
            .filter(|f| patterns.iter().any(|p| p.matches(&f.topic)));
        let standing =
            futures_util::future::try_join_all(followed.map(|f| standing(inner, f, &consumer)))
                .await?;
        let patterns = patterns.iter().map(|p| p.to_string()).collect();
        list.push(GroupInfo::new(record.group, patterns, standing));
    }
    Ok(list)
}

/// Where `group` started when it was made, from its record; `None` when it
/// has none (the group is new). A record from before herald kept the start
/// gives `spec`'s.
pub(crate) async fn made_at(
    inner: &Inner,
    group: &str,
    spec: &SubscribeSpec,
) -> Result<Option<StartPosition>> {
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("read the record of consumer group {group:?}"),
            e,
        )
    };
    let registry = match inner.js.get_stream(inner.names.groups_stream()).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(unavailable(&e)),
    };
    let subject = inner.names.group_subject(&inner.names.consumer(group));
    let msg = match registry.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(unavailable(&e)),
    };
    let record: Record = serde_json::from_slice(&msg.payload).map_err(|e| unavailable(&e))?;
    Ok(Some(record.start.map_or(spec.start, StartPosition::from)))
}

/// Record `group`, following `spec`'s patterns from `start` (where it
/// started when it was made), for [`groups`] to list and its later leaders
/// to start from.
pub(crate) async fn record(
    inner: &Inner,
    group: &str,
    spec: &SubscribeSpec,
    start: StartPosition,
) -> Result<()> {
    let config = stream::Config {
        name: inner.names.groups_stream(),
        subjects: vec![inner.names.group_subjects()],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: inner.config.replica_count(),
        ..Default::default()
    };
    let record = Record {
        group: group.to_owned(),
        patterns: herald::group::patterns_text(spec),
        start: Some(start.into()),
    };
    let written = async {
        inner.js.create_or_update_stream(config).await?;
        let subject = inner.names.group_subject(&inner.names.consumer(group));
        let body = serde_json::to_vec(&record)?;
        inner.js.publish(subject, body.into()).await?.await?;
        Ok::<_, async_nats::Error>(())
    };
    written.await.map_err(|e| {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("record consumer group {group:?}"),
            e,
        )
    })
}

/// This store's topic streams with events, by topic.
async fn topic_streams(inner: &Inner) -> Result<Vec<Found>> {
    let mut found = tail::list(inner, &inner.names.filter(">")).await?;
    found.retain(|f| f.last_seq > 0);
    found.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    Ok(found)
}

/// Where group consumer `consumer` stands on topic stream `found`.
async fn standing(inner: &Inner, found: &Found, consumer: &str) -> Result<GroupTopic> {
    let stream = inner
        .js
        .get_stream_no_info(&found.name)
        .await
        .map_err(|e| errors::nats(ErrorCode::Internal, "name a topic stream", e))?;
    let last = found.last_seq;
    let (acked_through, lag) = match stream.consumer_info(consumer).await {
        Ok(info) => {
            let acked_through = info.ack_floor.stream_sequence.min(last);
            let lag = info.num_pending + info.num_ack_pending as u64;
            (acked_through, lag.min(last - acked_through))
        }
        Err(e)
            if matches!(
                e.kind(),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            let acked_through = found.first_seq.saturating_sub(1).min(last);
            (acked_through, last - acked_through)
        }
        Err(e) => {
            return Err(errors::nats(
                ErrorCode::Unavailable,
                &format!("read a group's consumer on `{}`", found.topic),
                e,
            ))
        }
    };
    Ok(GroupTopic::new(
        found.topic.clone(),
        acked_through,
        last,
        lag,
    ))
}

/// Up to `limit` messages of `stream` from `start` on, no further than the
/// stream reached when the reader was made: an ephemeral pull consumer
/// without acks asks, without waiting, for as many as it has pending (in
/// fetches of up to [`FETCH_MAX`]), and is deleted after.
async fn read(
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

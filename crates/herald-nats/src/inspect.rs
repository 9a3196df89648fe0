//! What operators read off the store: its topics, a topic's events page by
//! page, each consumer group's offset and lag, and where one event stands
//! for a group.
//!
//! Owns [`topics`], [`replay`], [`groups`] and [`delivery_state`]. Topics
//! are this store's topic streams with a last sequence. Replay reads a
//! topic stream through an ephemeral pull consumer (no acks, `log::read`)
//! that asks for no more than the stream held when it was made, so it
//! never waits for new events and touches no group. A group is its record
//! (`group_record`: written by each process reading it as it starts, so
//! a group whose topics have no events yet is listed too) and its durable
//! consumers, one per part on each topic stream (`group`): a part
//! consumer's offset is the `seq` before the first message of its subject
//! past its ack floor (acks and the terms of dead-lettered events both
//! move the floor; a consumer with nothing left has the stream's end), and
//! the group's offset on the topic the least of its parts'; its lag is what
//! the parts' consumers have not delivered (`num_pending`) plus what they
//! delivered and nobody settled (`num_ack_pending`: events a reader holds
//! — waiting, deferred by a nack, in flight — or handed back as a part
//! moved). A group made before parts has one consumer per stream, read as
//! one part. A topic whose consumers nobody made yet counts every event it
//! holds as unsettled. An event's delivery state asks the dead letters,
//! then this process's queue of the group, then the reader of the event's
//! part over request/reply (`protocol`). It only reads: writing records, leading groups and
//! writing dead letters are theirs.

use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use herald::{
    DeliveryState, Envelope, Error, ErrorCode, GroupInfo, GroupTopic, Pattern, Result,
    StartPosition, Topic, TopicInfo,
};

use crate::conn::Inner;
use crate::errors;
use crate::group::Part;
use crate::tail::{self, Found};

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
    let Some(stream) = crate::log::stream(inner, topic).await? else {
        return Ok(Vec::new());
    };
    let mut events = Vec::new();
    for msg in crate::log::read(inner, &stream, start, limit).await? {
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
    let records = crate::group_record::list(inner).await?;
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

/// This store's topic streams with events, by topic.
async fn topic_streams(inner: &Inner) -> Result<Vec<Found>> {
    let mut found = tail::list(inner, &inner.names.filter(">")).await?;
    found.retain(|f| f.last_seq > 0);
    found.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    Ok(found)
}

/// Where group consumer `consumer` stands on topic stream `found`: over
/// its parts' consumers, the offset is the least of theirs and the lag
/// their sum; a group made before parts has its one consumer instead.
async fn standing(inner: &Inner, found: &Found, consumer: &str) -> Result<GroupTopic> {
    let stream = inner
        .js
        .get_stream_no_info(&found.name)
        .await
        .map_err(|e| errors::nats(ErrorCode::Internal, "name a topic stream", e))?;
    let last = found.last_seq;
    let mut names: Vec<String> = Part::of_topic(found.partitions)
        .map(|p| p.consumer(inner, consumer))
        .collect();
    names.push(consumer.to_owned());
    let mut acked_through = last;
    let mut lag = 0u64;
    let mut any = false;
    for name in names {
        if any && name == consumer {
            break;
        }
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                continue
            }
            Err(e) => {
                return Err(errors::nats(
                    ErrorCode::Unavailable,
                    &format!("read a group's consumer on `{}`", found.topic),
                    e,
                ))
            }
        };
        any = true;
        acked_through = acked_through.min(part_offset(&stream, &info, last).await);
        lag += info.num_pending + info.num_ack_pending as u64;
    }
    if !any {
        acked_through = found.first_seq.saturating_sub(1).min(last);
        lag = last - acked_through;
    }
    Ok(GroupTopic::new(
        found.topic.clone(),
        acked_through,
        last,
        lag.min(last - acked_through),
    ))
}

/// How far a consumer has every message it reads settled: the stream's
/// end when nothing is left to it, else just before the first message of
/// its subject past its ack floor (the floor itself when that cannot be
/// read).
async fn part_offset(
    stream: &async_nats::jetstream::stream::Stream<()>,
    info: &async_nats::jetstream::consumer::Info,
    last: u64,
) -> u64 {
    let floor = info.ack_floor.stream_sequence.min(last);
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        return last;
    }
    let filter = &info.config.filter_subject;
    if filter.is_empty() {
        return floor;
    }
    match stream
        .get_first_raw_message_by_subject(filter, floor + 1)
        .await
    {
        Ok(next) => next.sequence.saturating_sub(1).min(last),
        Err(_) => floor,
    }
}

/// Where event `seq` of `topic` stands for `group`: dead-lettered (in the
/// dead letters), in the leader's queue or with a member (when this process
/// leads the group), acked (at or below the consumer's ack floor, or
/// delivered and no longer held), pending (not yet delivered to the
/// group). `NOT_FOUND` for an event the topic does not have and a group
/// that does not follow the topic.
pub(crate) async fn delivery_state(
    inner: &Arc<Inner>,
    topic: &Topic,
    seq: u64,
    group: &str,
) -> Result<DeliveryState> {
    let no_event = || Error::new(ErrorCode::NotFound, format!("`{topic}` has no event {seq}"));
    let Some(stream) = crate::log::stream(inner, topic).await? else {
        return Err(no_event());
    };
    if seq == 0 || seq > stream.cached_info().state.last_sequence {
        return Err(no_event());
    }
    let Some(part) = Part::of_event(inner, &stream, seq).await else {
        return Err(no_event());
    };
    let consumer = part.consumer(inner, &inner.names.consumer(group));
    let info = match stream.consumer_info(&consumer).await {
        Ok(info) => info,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no consumer group {group:?} follows `{topic}`"),
            ))
        }
        Err(e) => {
            return Err(errors::nats(
                ErrorCode::Unavailable,
                "read a group's consumer",
                e,
            ))
        }
    };
    let filter = herald::DeadLetterFilter::default()
        .topic(topic.as_str())?
        .group(group);
    let dead = crate::dead_letters::list(inner, &filter).await?;
    if dead.iter().any(|d| d.envelope.seq() == Some(seq)) {
        return Ok(DeliveryState::DeadLettered);
    }
    let here = crate::group::leader(inner, group).and_then(|l| l.state_of(topic, seq));
    let at_reader = match here {
        Some(state) => Some(state),
        None => crate::protocol::state_at(inner, &consumer, topic, seq).await,
    };
    if let Some(state) = at_reader {
        return Ok(state);
    }
    if seq > info.delivered.stream_sequence {
        return Ok(DeliveryState::Pending);
    }
    Ok(DeliveryState::Acked)
}

//! What operators look at on Kafka: topics, a topic's last `seq`, replay
//! pages, consumer groups with their offsets and lag, and where an event
//! stands for a group.
//!
//! Owns [`last_seq`], [`topics`], [`replay`], [`groups`] (read from the
//! record of each group's patterns on `<environment>._groups`, which
//! `group` writes, one record per group consumer started: Kafka keeps a
//! group's offsets but not what it subscribed to) and [`delivery_state`].
//! On a topic of several partitions a `seq` is per partition: `last_seq` is
//! the largest partition's, replay merges the partitions by time, and a
//! group's offset and lag are summed over them. Does not own the offsets,
//! the group consumers or the letters it reads (`group`, `dead_letters`),
//! nor the `Inspect` impl (`transport`).

use std::collections::BTreeMap;

use herald::backend::transport::{
    DeliveryState, GroupInfo, GroupTopic, PartitionStanding, TopicInfo,
};
use herald::{Envelope, ErrorCode, Result, StartPosition, Topic};
use rdkafka::Offset;

use crate::codec::{self, Position};
use crate::conn::Inner;
use crate::dead_letters;
use crate::group::{committed, committed_offsets, local_groups, GroupRecord, GROUPS_TOPIC};
use crate::log::read_records;

/// The highest `seq` of `topic` (of its fullest partition).
pub(crate) async fn last_seq(inner: &Inner, topic: &Topic) -> Result<Option<u64>> {
    let name = inner.config.kafka_topic(topic.as_str());
    let partitions = inner.partitions(&name).await?;
    let mut last = 0;
    for p in 0..partitions as i32 {
        last = last.max(inner.watermarks(&name, p).await?.1);
    }
    Ok((last > 0).then_some(last as u64))
}

/// Every herald topic with events, by name.
pub(crate) async fn topics(inner: &Inner) -> Result<Vec<TopicInfo>> {
    let mut out = Vec::new();
    for (name, partitions) in inner.all_topics().await? {
        let Some(topic) = inner.topic_of(&name) else {
            continue;
        };
        let mut last = 0;
        for p in 0..partitions {
            last = last.max(inner.watermarks(&name, p).await?.1);
        }
        if last > 0 {
            out.push(TopicInfo::new(topic, last as u64).with_partitions(partitions as u32));
        }
    }
    out.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    Ok(out)
}

/// Up to `limit` events of `topic` from `from`, by partition order then
/// time (on one partition: in `seq` order).
pub(crate) async fn replay(
    inner: &Inner,
    topic: &Topic,
    from: StartPosition,
    limit: usize,
) -> Result<Vec<Envelope>> {
    let name = inner.config.kafka_topic(topic.as_str());
    let partitions = inner.partitions(&name).await? as i32;
    if partitions == 0 || from == StartPosition::Latest || limit == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (p, start) in crate::tail::starts(inner, &name, partitions, &from).await? {
        let from = match start {
            Offset::Offset(o) => o,
            _ => 0,
        };
        for r in read_records(inner, &name, p, from, limit).await? {
            let at = Position {
                partition: p,
                offset: r.offset,
                time_ms: r.time_ms,
            };
            match codec::decode(topic.clone(), &r.headers, r.key.as_deref(), r.value, at) {
                Ok(env) => out.push((r.time_ms, p, env)),
                Err(e) => {
                    tracing::warn!(%topic, partition = p, offset = r.offset, error = %e, "replay skips a record that does not decode")
                }
            }
        }
    }
    out.sort_by_key(|(t, p, e)| (*t, *p, e.seq()));
    out.truncate(limit);
    Ok(out.into_iter().map(|(_, _, e)| e).collect())
}

/// Every group this environment's consumers recorded, with where it
/// stands on each topic its patterns match.
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>> {
    let topic = inner.config.kafka_topic(GROUPS_TOPIC);
    if inner.partitions(&topic).await? == 0 {
        return Ok(Vec::new());
    }
    let mut patterns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in read_records(inner, &topic, 0, 0, usize::MAX).await? {
        let Ok(rec) = serde_json::from_slice::<GroupRecord>(&r.value) else {
            continue;
        };
        let known = patterns.entry(rec.group).or_default();
        for p in rec.patterns {
            if !known.contains(&p) {
                known.push(p);
            }
        }
    }
    let all = inner.all_topics().await?;
    let mut out = Vec::new();
    for (group, pats) in patterns {
        let parsed: Vec<herald::Pattern> = pats
            .iter()
            .filter_map(|p| herald::Pattern::new(p).ok())
            .collect();
        let mut standing = Vec::new();
        for (name, partitions) in &all {
            let Some(t) = inner.topic_of(name) else {
                continue;
            };
            if !parsed.iter().any(|p| p.matches(&t)) {
                continue;
            }
            let offsets = committed_offsets(inner, &group, name, *partitions).await?;
            let mut per_partition = Vec::new();
            for (p, committed) in (0..*partitions).zip(offsets) {
                let high = inner.watermarks(name, p).await?.1;
                let acked = committed.map_or(0, |(o, _)| o).min(high);
                per_partition.push(PartitionStanding::new(p as u32, acked as u64, high as u64));
            }
            let last: u64 = per_partition.iter().map(|s| s.last_seq).sum();
            if last == 0 {
                continue;
            }
            let acked: u64 = per_partition.iter().map(|s| s.acked_through).sum();
            standing
                .push(GroupTopic::new(t, acked, last, last - acked).with_partitions(per_partition));
        }
        out.push(GroupInfo::new(group, pats, standing));
    }
    Ok(out)
}

/// Where event `seq` of `topic` stands for `group`: in this process's
/// queue, dead-lettered, committed, or not yet delivered. Only one-partition
/// topics can be asked by `seq` alone.
pub(crate) async fn delivery_state(
    inner: &Inner,
    topic: &Topic,
    seq: u64,
    group: &str,
) -> Result<DeliveryState> {
    let name = inner.config.kafka_topic(topic.as_str());
    let partitions = inner.partitions(&name).await?;
    if partitions == 0 {
        return Err(herald::Error::new(
            ErrorCode::NotFound,
            format!("no topic `{topic}`"),
        ));
    }
    if partitions > 1 {
        return Err(herald::Error::validation(format!(
            "`{topic}` has {partitions} partitions: on Kafka a seq names an event only within its partition"
        )));
    }
    let (_, high) = inner.watermarks(&name, 0).await?;
    if seq == 0 || seq as i64 > high {
        return Err(herald::Error::new(
            ErrorCode::NotFound,
            format!("no event {seq} in `{topic}`"),
        ));
    }
    let local = local_groups(inner, group);
    for g in &local {
        if let Some(state) = g.state_of(&name, topic, seq) {
            if state != DeliveryState::Acked {
                return Ok(state);
            }
        }
    }
    let dead = dead_letters::list(inner, &herald::DeadLetterFilter::default().group(group)).await?;
    if dead
        .iter()
        .any(|d| d.envelope.topic() == topic && d.envelope.seq() == Some(seq))
    {
        return Ok(DeliveryState::DeadLettered);
    }
    let committed = committed(inner, group, &name).await?;
    match committed {
        None if local.is_empty() => Err(herald::Error::new(
            ErrorCode::NotFound,
            format!("no consumer group {group:?} follows `{topic}`"),
        )),
        None => Ok(DeliveryState::Pending),
        Some((next, settled)) => {
            let offset = seq as i64 - 1;
            if offset < next || settled.contains(&offset) {
                Ok(DeliveryState::Acked)
            } else {
                Ok(DeliveryState::Pending)
            }
        }
    }
}

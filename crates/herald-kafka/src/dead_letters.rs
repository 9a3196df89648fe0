//! Dead letters on Kafka: one topic, one record per letter.
//!
//! Owns writing a dead letter to `<environment>.dead_letters` (one
//! partition, so a letter's id is its offset + 1): the original value and
//! headers, plus `original_topic`, `original_partition`, `original_offset`,
//! `failure_reason`, `failure_timestamp`, `error_type`, `retry_count` and
//! `correlation_id`, and herald's own `herald_dead_*` headers (group,
//! source, first failure) — so a plain Kafka consumer of the topic sees what
//! failed and why. Listing reads the topic in pages; purging writes the
//! purged ids to `<environment>._dead_letters_purged` (Kafka deletes records
//! only by prefix), which listing subtracts.

use std::collections::HashSet;

use bytes::Bytes;
use herald::dead_letter::{select_pages, DeadLetterRow};
use herald::{DeadLetter, DeadLetterFilter, Result, Topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::codec::{self, Position};
use crate::errors;
use crate::reader::read;
use crate::store::Inner;

/// The original's herald topic.
pub const ORIGINAL_TOPIC: &str = "original_topic";
/// The original record's partition.
pub const ORIGINAL_PARTITION: &str = "original_partition";
/// The original record's offset.
pub const ORIGINAL_OFFSET: &str = "original_offset";
/// Why it failed.
pub const FAILURE_REASON: &str = "failure_reason";
/// When it was dead-lettered (RFC 3339, ms).
pub const FAILURE_TIMESTAMP: &str = "failure_timestamp";
/// The failure's herald error code (`VALIDATION`, `TIMEOUT`, …).
pub const ERROR_TYPE: &str = "error_type";
const GROUP: &str = "herald_dead_group";
const SOURCE: &str = "herald_dead_source";
const FIRST_FAILED: &str = "herald_dead_first_failed_ms";
const FAILED: &str = "herald_dead_failed_ms";
const ATTEMPTS: &str = "herald_dead_attempts";
const PURGED: &str = "herald_dead_purged";

/// Letters read per page when listing.
const PAGE: usize = 256;

/// The raw record of a letter whose original did not decode: its headers
/// and value as they were.
pub(crate) type Raw = (Vec<(String, String)>, Bytes);

/// Write `letter` (its original at `at`, raw as `raw` when it did not
/// decode) to the dead-letter topic; `Ok` once the brokers have it.
pub(crate) async fn write(
    inner: &Inner,
    letter: &DeadLetter,
    at: Option<Position>,
    raw: Option<&Raw>,
) -> Result<()> {
    inner.check_open()?;
    let env = &letter.envelope;
    let (mut headers, value, key) = match raw {
        Some((pairs, value)) => {
            let mut h = OwnedHeaders::new_with_capacity(pairs.len() + 12);
            for (n, v) in pairs {
                h = h.insert(Header {
                    key: n.as_str(),
                    value: Some(v.as_bytes()),
                });
            }
            (h, value.clone(), env.key().map(str::to_owned))
        }
        None => {
            let r = codec::encode(env, inner.config.deliveries())?;
            (r.headers, r.value, r.key)
        }
    };
    let mut put = |name: &str, value: String| {
        headers = std::mem::take(&mut headers).insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    };
    put(ORIGINAL_TOPIC, env.topic().to_string());
    if let Some(at) = at {
        put(ORIGINAL_PARTITION, at.partition.to_string());
        put(ORIGINAL_OFFSET, at.offset.to_string());
    }
    put(FAILURE_REASON, one_line(&letter.reason));
    put(
        FAILURE_TIMESTAMP,
        letter
            .failed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    put(ERROR_TYPE, letter.code.as_str().to_owned());
    if raw.is_some() {
        put(
            codec::RETRY_COUNT,
            letter.attempts.saturating_sub(1).to_string(),
        );
        put("correlation_id", env.correlation_id().to_string());
    }
    if let Some(g) = &letter.group {
        put(GROUP, g.clone());
    }
    put(SOURCE, letter.source.as_str().to_owned());
    put(ATTEMPTS, letter.attempts.to_string());
    put(
        FIRST_FAILED,
        letter.first_failed_at.timestamp_millis().to_string(),
    );
    put(FAILED, letter.failed_at.timestamp_millis().to_string());
    let topic = inner.config.dead_letter_topic();
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
        .payload(&value[..])
        .headers(headers);
    if let Some(k) = &key {
        record = record.key(k.as_str());
    }
    inner
        .producer
        .send(record, inner.config.timeout_duration())
        .await
        .map_err(|(e, _)| errors::kafka("write a dead letter", &e))?;
    Ok(())
}

/// Header values are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The letters `filter` selects, oldest first.
pub(crate) async fn list(inner: &Inner, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
    inner.check_open()?;
    let purged = purged(inner).await?;
    select_pages(filter, |after| page(inner, after, purged.clone())).await
}

/// Mark the letters `filter` selects as purged; how many.
pub(crate) async fn purge(inner: &Inner, filter: &DeadLetterFilter) -> Result<u64> {
    let doomed = list(inner, filter).await?;
    if doomed.is_empty() {
        return Ok(0);
    }
    let topic = inner.config.kafka_topic("_dead_letters_purged");
    inner.ensure_topic_with(&topic, 1).await?;
    for chunk in doomed.chunks(500) {
        let ids: Vec<String> = chunk.iter().map(|d| d.id.to_string()).collect();
        let ids = ids.join(",");
        let headers = OwnedHeaders::new().insert(Header {
            key: PURGED,
            value: Some(ids.as_bytes()),
        });
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&topic).payload(&[][..]).headers(headers);
        inner
            .producer
            .send(record, inner.config.timeout_duration())
            .await
            .map_err(|(e, _)| errors::kafka("purge dead letters", &e))?;
    }
    Ok(doomed.len() as u64)
}

/// The ids purged so far.
async fn purged(inner: &Inner) -> Result<HashSet<u64>> {
    let topic = inner.config.kafka_topic("_dead_letters_purged");
    if inner.partitions(&topic).await? == 0 {
        return Ok(HashSet::new());
    }
    let mut ids = HashSet::new();
    for (_, headers, _) in read(inner, &topic, 0, 0, usize::MAX).await? {
        if let Some((_, v)) = headers.iter().find(|(n, _)| n == PURGED) {
            ids.extend(v.split(',').filter_map(|i| i.parse::<u64>().ok()));
        }
    }
    Ok(ids)
}

/// Up to [`PAGE`] letters with an id above `after`.
async fn page(inner: &Inner, after: i64, purged: HashSet<u64>) -> Result<Vec<DeadLetterRow>> {
    let topic = inner.config.dead_letter_topic();
    let mut rows = Vec::new();
    let mut from = after.max(0);
    loop {
        let records = read(inner, &topic, 0, from, PAGE).await?;
        let Some(last) = records.last().map(|r| r.0) else {
            return Ok(rows);
        };
        for (offset, headers, value) in records {
            let id = offset.max(0) as u64 + 1;
            if !purged.contains(&id) {
                rows.push(row(id, &headers, value)?);
            }
        }
        from = last + 1;
        if !rows.is_empty() {
            return Ok(rows);
        }
    }
}

/// A letter's columns from its record.
fn row(id: u64, headers: &[(String, String)], value: Bytes) -> Result<DeadLetterRow> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let ms = |name: &str| get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    let topic = get(ORIGINAL_TOPIC)
        .and_then(|t| Topic::new(t).ok())
        .ok_or_else(|| {
            herald::Error::internal(format!("dead letter {id} names no original topic"))
        })?;
    let at = Position {
        partition: get(ORIGINAL_PARTITION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        offset: get(ORIGINAL_OFFSET)
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
        time_ms: ms(FAILED),
    };
    let attempts: u32 = get(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(1);
    // An original that did not decode is shown as a plain client's record.
    let env = codec::decode(topic.clone(), headers, None, value.clone(), at)
        .or_else(|_| codec::decode(topic, &[], None, value, at))?;
    let env = env.with_attempt(attempts);
    Ok((
        id.min(i64::MAX as u64) as i64,
        get(GROUP),
        get(ERROR_TYPE).unwrap_or_default(),
        get(FAILURE_REASON).unwrap_or_default(),
        i64::from(attempts),
        get(SOURCE).unwrap_or_default(),
        ms(FIRST_FAILED),
        ms(FAILED),
        env.to_json()?,
    ))
}

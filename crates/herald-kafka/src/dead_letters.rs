//! Dead letters on Kafka, as operators see them: listing and purging the
//! letters on `<environment>.dead_letters` (one partition, so a letter's id
//! is its offset + 1).
//!
//! Owns [`list`] (the topic read in pages, each record turned back into a
//! letter from the headers `log` wrote) and [`purge`]: purging writes the
//! purged ids to `<environment>._dead_letters_purged` (Kafka deletes records
//! only by prefix), which listing subtracts. Does not own writing a letter
//! or its record's format (`log::write_dead_letter`, which `tail` and
//! `group` call, so they sit below this module), nor when an event is
//! dead-lettered or what becomes of its offset (the queue and `group`).

use std::collections::HashSet;

use bytes::Bytes;
use herald::backend::{select_pages, DeadLetterRow};
use herald::{DeadLetter, DeadLetterFilter, Result, Topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::codec::{self, Position};
use crate::conn::Inner;
use crate::errors;
use crate::log::{
    read, ATTEMPTS, ERROR_TYPE, FAILED, FAILURE_REASON, FIRST_FAILED, GROUP, ORIGINAL_OFFSET,
    ORIGINAL_PARTITION, ORIGINAL_TOPIC, SOURCE,
};

/// On a record of `<environment>._dead_letters_purged`: the purged ids.
const PURGED: &str = "herald_dead_purged";

/// Letters read per page when listing.
const PAGE: usize = 256;

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

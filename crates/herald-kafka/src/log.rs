//! The log: producing records to Kafka topics and reading them back.
//!
//! Owns [`append`] (publishing: records pipelined through the idempotent
//! producer, every delivery report awaited, `seq` = offset + 1, idempotency
//! keys this process published within the dedupe window answered with
//! their first `seq` without a second send); [`write_dead_letter`] and the
//! dead-letter record's format: on `<environment>.dead_letters` the
//! original value and headers, plus `original_topic`,
//! `original_partition`, `original_offset`, `failure_reason`,
//! `failure_timestamp`, `error_type`, `retry_count` and `correlation_id`,
//! and herald's own `herald_dead_*` headers (group, source, first failure)
//! — so a plain Kafka consumer of the topic sees what failed and why; and
//! [`read_records`] / [`read`]: the records of one partition from an
//! offset, in no group and committing nothing, up to a count or the
//! partition's end as it was when the read began — for replay, dead
//! letters and herald's own bookkeeping topics.
//!
//! Does not own the topics themselves (made, listed and measured by
//! `conn`), consuming for subscriptions (`feed`, `tail`, `group`), or
//! listing and purging letters (`dead_letters`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::{DeadLetter, Envelope, ErrorCode, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{self, Position};
use crate::conn::{blocking, client_config, Inner};
use crate::dedupe::{Claim, Dedupe};
use crate::errors;

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
/// The group that gave up on it (none for a group-less subscription).
pub(crate) const GROUP: &str = "herald_dead_group";
/// What failed (`FailureSource`: handler, expiry, decode, …).
pub(crate) const SOURCE: &str = "herald_dead_source";
/// When its first delivery failed (ms since the epoch).
pub(crate) const FIRST_FAILED: &str = "herald_dead_first_failed_ms";
/// When it was dead-lettered (ms since the epoch).
pub(crate) const FAILED: &str = "herald_dead_failed_ms";
/// How many deliveries it had.
pub(crate) const ATTEMPTS: &str = "herald_dead_attempts";

/// The raw record of a letter whose original did not decode: its headers
/// and value as they were.
pub(crate) type Raw = (Vec<(String, String)>, Bytes);

/// Write `letter` (its original at `at`, raw as `raw` when it did not
/// decode) to the dead-letter topic; `Ok` once the brokers have it.
pub(crate) async fn write_dead_letter(
    inner: &Inner,
    letter: &DeadLetter,
    at: Option<Position>,
    raw: Option<&Raw>,
) -> Result<()> {
    inner.check_open()?;
    if inner.discards.discard(letter) {
        return Ok(());
    }
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

/// Append `batch`; each event's `seq` is its offset + 1 in its partition.
pub(crate) async fn append(inner: &Inner, batch: Vec<Envelope>) -> Result<Vec<u64>> {
    inner.check_open()?;
    let names: Vec<String> = batch
        .iter()
        .map(|e| inner.config.kafka_topic(e.topic().as_str()))
        .collect();
    let mut distinct = names.clone();
    distinct.sort();
    distinct.dedup();
    for name in &distinct {
        inner.ensure_topic(name).await?;
    }
    let window = inner.config.dedupe_duration();
    let mut seqs: Vec<Option<u64>> = vec![None; batch.len()];
    let mut todo: Vec<usize> = (0..batch.len()).collect();
    // Each round sends the records whose keys this publish claims, and
    // then waits for the keys other publishes (or this one, for a key
    // the batch names twice) had in flight; a key whose publish failed
    // is claimed again in the next round.
    while !todo.is_empty() {
        let mut sends = Vec::new();
        let mut waits = Vec::new();
        let mut failed = None;
        for &i in &todo {
            let env = &batch[i];
            let mine = if window.is_zero() {
                None
            } else {
                let key = (
                    env.topic().as_str().to_owned(),
                    env.idempotency_key().into_owned(),
                );
                match inner.dedupe.claim(key, window) {
                    Claim::Written(seq) => {
                        seqs[i] = Some(seq);
                        continue;
                    }
                    Claim::InFlight(outcome) => {
                        waits.push((i, outcome));
                        continue;
                    }
                    Claim::Mine(mine) => Some(mine),
                }
            };
            let partition = match env.key() {
                Some(_) => Ok(None),
                None => inner.keyless_partition(&names[i]).await,
            };
            let sent = match (codec::encode(env, inner.config.deliveries()), partition) {
                (Ok(record), Ok(partition)) => send(inner, &names[i], &record, partition).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match sent {
                Ok(delivery) => sends.push((i, mine, delivery)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Every record sent has its report awaited, so what was written
        // is remembered even when another record of the batch failed.
        for (i, mine, delivery) in sends {
            let written = match delivery.await {
                // A broker may acknowledge a record without its offset
                // (tansu 0.6 just after it restarted): written, but at
                // an unknown seq, which herald cannot return.
                Ok(Ok(d)) if d.offset < 0 => {
                    failed.get_or_insert_with(|| {
                        herald::Error::new(
                            ErrorCode::Unavailable,
                            format!(
                                "Kafka: the broker acknowledged an event of `{}` without its offset: it may be stored, and a retry may store it again",
                                batch[i].topic()
                            ),
                        )
                    });
                    continue;
                }
                Ok(Ok(d)) => d.offset as u64 + 1,
                Ok(Err((e, _))) => {
                    failed.get_or_insert_with(|| {
                        errors::kafka(&format!("publish to `{}`", batch[i].topic()), &e)
                    });
                    continue;
                }
                Err(_) => {
                    failed.get_or_insert_with(|| {
                        herald::Error::new(ErrorCode::Unavailable, "Kafka: the producer went away")
                    });
                    continue;
                }
            };
            seqs[i] = Some(written);
            if let Some(mine) = mine {
                mine.written(written);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        todo.clear();
        for (i, outcome) in waits {
            match Dedupe::outcome(outcome).await {
                Some(seq) => seqs[i] = Some(seq),
                None => todo.push(i),
            }
        }
    }
    Ok(seqs.into_iter().map(|s| s.unwrap_or(0)).collect())
}

/// Hand one record to the producer, waiting while its queue is full.
async fn send(
    inner: &Inner,
    topic: &str,
    record: &codec::Record,
    partition: Option<i32>,
) -> Result<rdkafka::producer::DeliveryFuture> {
    let deadline = Instant::now() + inner.config.timeout_duration();
    loop {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .payload(&record.value[..])
            .headers(record.headers.clone());
        if let Some(k) = &record.key {
            r = r.key(k.as_str());
        }
        if let Some(p) = partition {
            r = r.partition(p);
        }
        match inner.producer.send_result(r) {
            Ok(f) => return Ok(f),
            Err((e, _))
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(errors::kafka(&format!("publish to `{topic}`"), &e)),
        }
    }
}

/// One record read: its offset, text headers, key, value and timestamp (ms).
pub(crate) struct Read {
    pub(crate) offset: i64,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Bytes,
    pub(crate) time_ms: i64,
}

/// The records of `partition` of Kafka topic `topic` from offset `from`
/// (or its first retained one), up to `max` of them or its end.
pub(crate) async fn read_records(
    inner: &Inner,
    topic: &str,
    partition: i32,
    from: i64,
    max: usize,
) -> Result<Vec<Read>> {
    let (low, high) = inner.watermarks(topic, partition).await?;
    let from = from.max(low);
    if from >= high || max == 0 {
        return Ok(Vec::new());
    }
    let config = client_config(inner.config.reader_properties());
    let topic = topic.to_owned();
    let wait = inner.config.timeout_duration();
    // Held until the reader is gone (it is dropped first, in this closure),
    // so `close` waits for a read under way.
    let running = inner.consumer_started()?;
    blocking(move || {
        let _running = running;
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| errors::kafka("create a reader", &e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from))
            .map_err(|e| errors::kafka(&format!("read `{topic}`"), &e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| errors::kafka(&format!("read `{topic}`"), &e))?;
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut next = from;
        while next < high && out.len() < max {
            if Instant::now() > deadline {
                return Err(herald::Error::new(
                    ErrorCode::Timeout,
                    format!("Kafka: reading `{topic}` took over {wait:?}"),
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    out.push(Read {
                        offset: m.offset(),
                        headers: codec::pairs(m.headers()),
                        key: m.key().map(<[u8]>::to_vec),
                        value: Bytes::copy_from_slice(m.payload().unwrap_or(&[])),
                        time_ms: m.timestamp().to_millis().unwrap_or(0),
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "Kafka: reading `{topic}`"),
                None => {}
            }
        }
        Ok(out)
    })
    .await?
}

/// [`read_records`] as (offset, headers, value).
pub(crate) async fn read(
    inner: &Inner,
    topic: &str,
    partition: i32,
    from: i64,
    max: usize,
) -> Result<Vec<(i64, Vec<(String, String)>, Bytes)>> {
    Ok(read_records(inner, topic, partition, from, max)
        .await?
        .into_iter()
        .map(|r| (r.offset, r.headers, r.value))
        .collect())
}

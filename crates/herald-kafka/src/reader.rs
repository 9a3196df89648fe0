//! Reading a partition's records directly, in no group and committing
//! nothing: for replay, dead letters and herald's own bookkeeping topics.
//!
//! Owns [`read`]: the records of one partition from an offset, up to a count
//! or the partition's end as it was when the read began.

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::{ErrorCode, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec;
use crate::errors;
use crate::store::{blocking, Inner};

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
    let config = crate::store::client_config(inner.config.reader_properties());
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

//! Group-less subscriptions: every matching partition, read by a consumer
//! in no group, into one delivery queue.
//!
//! Owns [`subscribe`] for subscriptions without a group and [`starts`] (a
//! start position as partition offsets, shared with `group`). A tail
//! assigns itself every partition of every Kafka topic its patterns match,
//! from the start position; it finds topics made later by listing the
//! brokers' topics every half second (and at once for topics this process
//! creates) and reads them from their beginning. It commits nothing: a
//! group-less subscription is ephemeral on Kafka, as everywhere. The queue
//! does the rest (capacity, nack and ack-wait redelivery, expiry, priority),
//! with the store's `Inner` as its host (the `QueueHost` impl here): it
//! settles nothing on the brokers, and what it gives up on goes to the
//! dead letters. Does not own the feeding loop (`feed`), consumer groups
//! (`group`) or the choice between a tail and a group (`transport`).

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use herald::backend::dead_lettering::DeadLetterWrites;
use herald::backend::queue::{self, Queue, QueueHost};
use herald::backend::BoxFuture;
use herald::{DeadLetter, Envelope, Result, StartPosition, SubscribeSpec, Subscription, Topic};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{record_position, Position};
use crate::conn::{blocking, client_config, Inner, LOOKUP_TIMEOUT};
use crate::errors;
use crate::feed::{self, Hooks};
use crate::log::write_dead_letter;

pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let host: Weak<dyn QueueHost> = Arc::downgrade(inner) as Weak<Inner>;
    let max_in_flight = spec.max_in_flight;
    let queue = Queue::new(spec.clone(), host);
    queue.join();
    inner.register(&queue)?;
    // Counted before it exists, so `close` waits for it (feed::run drops it).
    let running = inner.consumer_started()?;
    let config = client_config(inner.config.reader_properties());
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| errors::kafka("create a consumer", &e))?;
    let consumer = Arc::new(consumer);
    let created = inner.created.subscribe();
    let mut assigned = HashSet::new();
    let mut tpl = TopicPartitionList::new();
    for (name, partitions) in matching(inner, &spec).await? {
        for (p, offset) in starts(inner, &name, partitions, &spec.start).await? {
            tpl.add_partition_offset(&name, p, offset)
                .map_err(|e| errors::kafka("assign partitions", &e))?;
        }
        assigned.insert(name);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| errors::kafka("assign partitions", &e))?;
    let hooks = Tail {
        inner: Arc::downgrade(inner),
        spec,
        assigned: Mutex::new(assigned),
        created: Mutex::new(created),
        queue: Arc::downgrade(&queue),
    };
    let topic_inner = Arc::downgrade(inner);
    let (q, c) = (queue.clone(), consumer.clone());
    std::thread::Builder::new()
        .name("herald-kafka-tail".into())
        .spawn(move || {
            feed::run(c, q, hooks, |name| {
                topic_inner.upgrade().and_then(|i| i.topic_of(name))
            });
            drop(running);
        })
        .map_err(|e| herald::Error::internal(format!("start a consumer thread: {e}")))?;
    Ok(queue::member(queue, max_in_flight))
}

/// The Kafka topics (with their partition counts) whose herald topics
/// `spec` follows.
pub(crate) async fn matching(inner: &Inner, spec: &SubscribeSpec) -> Result<Vec<(String, i32)>> {
    Ok(inner
        .all_topics()
        .await?
        .into_iter()
        .filter(|(name, _)| {
            inner
                .topic_of(name)
                .is_some_and(|t| spec.patterns.iter().any(|p| p.matches(&t)))
        })
        .collect())
}

/// Where each of the `partitions` partitions of Kafka topic `name` is read
/// from for `start`: the beginning, the current end, offset `seq - 1`, or
/// the first record at or after a time (its end when there is none).
pub(crate) async fn starts(
    inner: &Inner,
    name: &str,
    partitions: i32,
    start: &StartPosition,
) -> Result<Vec<(i32, Offset)>> {
    let mut out = Vec::with_capacity(partitions.max(0) as usize);
    match start {
        StartPosition::Earliest => out.extend((0..partitions).map(|p| (p, Offset::Beginning))),
        StartPosition::Seq(n) => {
            let at = i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX);
            out.extend((0..partitions).map(|p| (p, Offset::Offset(at))));
        }
        StartPosition::Latest => {
            for p in 0..partitions {
                let (_, high) = inner.watermarks(name, p).await?;
                out.push((p, Offset::Offset(high)));
            }
        }
        StartPosition::Time(t) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(name, p, Offset::Offset(t.timestamp_millis()))
                    .map_err(|e| errors::kafka("look up offsets by time", &e))?;
            }
            let meta = inner.meta.clone();
            let found = blocking(move || meta.offsets_for_times(tpl, LOOKUP_TIMEOUT))
                .await?
                .map_err(|e| errors::kafka(&format!("look up offsets by time in `{name}`"), &e))?;
            let found: Vec<(i32, Offset)> = found
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect();
            for (p, offset) in found {
                let offset = match offset {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Offset(inner.watermarks(name, p).await?.1),
                };
                out.push((p, offset));
            }
        }
    }
    Ok(out)
}

/// A tail's side of the feeding loop.
struct Tail {
    inner: Weak<Inner>,
    spec: SubscribeSpec,
    assigned: Mutex<HashSet<String>>,
    created: Mutex<tokio::sync::broadcast::Receiver<String>>,
    queue: Weak<Queue>,
}

impl Tail {
    /// Assign the partitions of matching topics not yet followed, from
    /// their beginning: they were made after the subscription opened.
    fn follow_new(&self, consumer: &BaseConsumer, inner: &Inner) {
        let listed = match consumer.fetch_metadata(None, LOOKUP_TIMEOUT) {
            Ok(md) => md,
            Err(e) => {
                tracing::debug!(error = %e, "Kafka: list topics for a subscription");
                return;
            }
        };
        let mut assigned = self.assigned.lock();
        let mut tpl = TopicPartitionList::new();
        let mut added = Vec::new();
        for t in listed.topics() {
            let name = t.name();
            let wanted = t.error().is_none()
                && !t.partitions().is_empty()
                && !assigned.contains(name)
                && inner
                    .topic_of(name)
                    .is_some_and(|h| self.spec.patterns.iter().any(|p| p.matches(&h)));
            if !wanted {
                continue;
            }
            for p in t.partitions() {
                let _ = tpl.add_partition_offset(name, p.id(), Offset::Beginning);
            }
            added.push(name.to_owned());
        }
        if added.is_empty() {
            return;
        }
        match consumer.incremental_assign(&tpl) {
            Ok(()) => assigned.extend(added),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka: a subscription could not follow new topics")
            }
        }
    }
}

impl Hooks<DefaultConsumerContext> for Tail {
    fn generation(&self, _kafka_topic: &str, _partition: i32) -> Option<u64> {
        Some(0)
    }

    fn admit(&self, envelope: &Envelope, _: &str, _: i32, _: i64) -> Option<u32> {
        self.spec
            .wants(envelope.topic().as_str(), envelope.kind())
            .then_some(1)
    }

    fn undecodable(
        &self,
        topic: Topic,
        _kafka_topic: &str,
        at: Position,
        _raw: (Vec<(String, String)>, Bytes),
        err: herald::Error,
    ) {
        tracing::warn!(
            %topic, partition = at.partition, offset = at.offset, error = %err,
            "a Kafka record does not decode; this group-less subscription skips it (consumer groups dead-letter it)"
        );
    }

    fn tick(&self, consumer: &BaseConsumer) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        {
            let mut created = self.created.lock();
            while created.try_recv().is_ok() {}
        }
        self.follow_new(consumer, &inner);
    }

    fn news(&self) -> bool {
        !self.created.lock().is_empty()
    }

    fn done(&self) -> bool {
        self.inner.upgrade().is_none_or(|i| i.is_closed())
            || self.queue.upgrade().is_none_or(|q| q.is_closed())
    }
}

/// Group-less subscriptions settle nothing on the brokers; what they give
/// up on goes to the dead letters.
impl QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        let inner = self.me();
        Box::pin(async move {
            let inner = inner.ok_or_else(errors::closed)?;
            let at = record_position(&letter.envelope);
            write_dead_letter(&inner, &letter, at, None).await
        })
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }
}

//! A consumer's thread: poll librdkafka, turn records into envelopes, hand
//! them to a delivery queue — without ever blocking the poll.
//!
//! Owns [`run`], the loop shared by group-less subscriptions (`tail`) and
//! consumer groups (`group`). librdkafka's consumer is polled on a thread of
//! its own because its rebalance callbacks run inside `poll` and make
//! blocking calls. When the queue is full, the loop waits for room, still
//! polling every [`POLL`] so rebalances are served (at most one record a
//! poll joins what is pending); only a queue full for [`PAUSE_AFTER`]
//! gets its partitions paused, since a pause throws away librdkafka's
//! prefetch and a resume stalls the partitions. It resumes them once the
//! queue takes what is pending. What is done
//! with a record — whether it is still to be delivered, what becomes of one
//! that does not decode, which partitions are still this consumer's — is
//! the [`Hooks`]'. The loop ends by dropping its consumer on its own thread
//! ([`finish`]), so a consumer is gone when its thread ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::backend::queue::Queue;
use herald::{Envelope, Topic};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};

use crate::codec::{self, Position};

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(20);

/// How often [`Hooks::tick`] runs.
pub(crate) const TICK: Duration = Duration::from_millis(500);

/// Most envelopes offered to the queue at once.
const CHUNK: usize = 256;

/// How long the queue may stay full before the consumer's partitions are
/// paused. A pause throws away what librdkafka prefetched for them, and a
/// resume left them without a record for 0.75–0.9 s each time (measured on
/// tansu), so a queue that is full only until its members take the next
/// events is waited out instead; only a consumer whose members stay busy
/// that long is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often a loop waiting for room in its queue looks for it.
const ROOM_CHECK: Duration = Duration::from_millis(1);

/// A record polled and decoded, not yet taken by the queue.
pub(crate) struct Pending {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) kafka_topic: String,
    pub(crate) partition: i32,
    /// The assignment generation it was read under.
    pub(crate) generation: u64,
}

/// What a feeding loop asks of its subscription.
pub(crate) trait Hooks<C: ConsumerContext>: Send + 'static {
    /// The generation of the current assignment of `partition` of
    /// `kafka_topic`; `None` when it is no longer this consumer's.
    fn generation(&self, kafka_topic: &str, partition: i32) -> Option<u64>;

    /// The attempt the record at `offset` is delivered as (1, or more when
    /// an earlier consumer delivered it before), or `None` when it is not to
    /// be delivered (settled before, or not for this subscription and so
    /// counted settled).
    fn admit(
        &self,
        envelope: &Envelope,
        kafka_topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<u32>;

    /// A record on `topic` that does not decode.
    fn undecodable(
        &self,
        topic: Topic,
        kafka_topic: &str,
        at: Position,
        raw: (Vec<(String, String)>, Bytes),
        err: herald::Error,
    );

    /// Runs every [`TICK`] on the consumer's thread (find new topics), and
    /// at once when [`news`](Hooks::news) says so.
    fn tick(&self, consumer: &BaseConsumer<C>);

    /// Whether to tick now (this process made a topic).
    fn news(&self) -> bool {
        false
    }

    /// Whether the loop must end (the store or queue closed).
    fn done(&self) -> bool;
}

/// Poll `consumer` into `queue` until the hooks say done, then drop it on
/// this thread ([`finish`]); `topic_of` names a Kafka topic's herald topic
/// (`None`: not one of herald's).
pub(crate) fn run<C, H>(
    consumer: Arc<BaseConsumer<C>>,
    queue: Arc<Queue>,
    hooks: H,
    topic_of: impl Fn(&str) -> Option<Topic>,
) where
    C: ConsumerContext,
    H: Hooks<C>,
{
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut paused = false;
    let mut full_since: Option<Instant> = None;
    let mut last_tick = Instant::now();
    while !hooks.done() && !queue.is_closed() {
        if last_tick.elapsed() >= TICK || hooks.news() {
            hooks.tick(&consumer);
            last_tick = Instant::now();
        }
        pending.retain(|p| hooks.generation(&p.kafka_topic, p.partition) == Some(p.generation));
        hand_over(&queue, &mut pending);
        if pending.is_empty() {
            full_since = None;
            if paused {
                if let Ok(assigned) = consumer.assignment() {
                    paused = consumer.resume(&assigned).is_err();
                }
            }
        } else if !paused {
            let since = *full_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= PAUSE_AFTER {
                if let Ok(assigned) = consumer.assignment() {
                    paused = consumer.pause(&assigned).is_ok();
                }
            } else {
                wait_for_room(&queue, &mut pending);
            }
        }
        // What the consumer holds ready is read together, so the queue
        // gets it together (priority orders events waiting at once). While
        // the queue is still full and the partitions are not paused, one
        // poll serves rebalances and events, and at most one record joins
        // what is pending.
        let (mut wait, most) = if pending.is_empty() || paused {
            (POLL, CHUNK)
        } else {
            (Duration::ZERO, 1)
        };
        for _ in 0..most {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(msg)) => {
                    if let Some(p) = read(&msg, &hooks, &topic_of) {
                        pending.push_back(p);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Kafka consumer error (librdkafka retries)");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
    }
    finish(consumer);
}

/// Drop `consumer` here, on the thread that polls it, once no other thread
/// holds it (a commit under way on the blocking pool may, for a moment;
/// polling goes on meanwhile, so the group is kept). Dropping a consumer
/// closes it: a group consumer leaves its group, and its revocation runs in
/// the polls of that close, which must be this thread's. Only then is it
/// gone — its fetchers stopped, librdkafka's threads for it ended — and
/// the thread may tell the store so (`conn::ConsumerGuard`); a consumer
/// whose last handle went on another thread would still be fetching.
fn finish<C: ConsumerContext>(mut consumer: Arc<BaseConsumer<C>>) {
    loop {
        match Arc::try_unwrap(consumer) {
            Ok(last) => {
                drop(last);
                return;
            }
            Err(shared) => {
                consumer = shared;
                let _ = consumer.poll(POLL);
            }
        }
    }
}

/// Wait up to [`POLL`] for the queue to take what is pending, looking
/// every [`ROOM_CHECK`].
fn wait_for_room(queue: &Queue, pending: &mut VecDeque<Pending>) {
    let until = Instant::now() + POLL;
    while !pending.is_empty() && !queue.is_closed() && Instant::now() < until {
        std::thread::sleep(ROOM_CHECK);
        hand_over(queue, pending);
    }
}

/// Offer what is pending, in chunks of what the queue has room for, as
/// far as it takes it: a queue with room for fewer than a chunk takes what
/// fits in one offer, not one offer per event.
fn hand_over(queue: &Queue, pending: &mut VecDeque<Pending>) {
    while !pending.is_empty() {
        let n = pending.len().min(CHUNK).min(queue.room());
        if n == 0 {
            return;
        }
        let chunk: Vec<Arc<Envelope>> =
            pending.iter().take(n).map(|p| p.envelope.clone()).collect();
        if queue.offer(chunk).is_err() {
            return;
        }
        pending.drain(..n);
    }
}

/// The record `msg` as a pending delivery, or `None` when it is not one.
fn read<C: ConsumerContext, H: Hooks<C>>(
    msg: &BorrowedMessage<'_>,
    hooks: &H,
    topic_of: &impl Fn(&str) -> Option<Topic>,
) -> Option<Pending> {
    let kafka_topic = msg.topic();
    let generation = hooks.generation(kafka_topic, msg.partition())?;
    let topic = topic_of(kafka_topic)?;
    let pairs = codec::pairs(msg.headers());
    let value = Bytes::copy_from_slice(msg.payload().unwrap_or(&[]));
    let at = Position {
        partition: msg.partition(),
        offset: msg.offset(),
        time_ms: msg.timestamp().to_millis().unwrap_or(0),
    };
    match codec::decode(topic.clone(), &pairs, msg.key(), value.clone(), at) {
        Ok(env) => {
            let attempt = hooks.admit(&env, kafka_topic, at.partition, at.offset)?;
            let env = if attempt > 1 {
                env.with_attempt(attempt)
            } else {
                env
            };
            Some(Pending {
                envelope: Arc::new(env),
                kafka_topic: kafka_topic.to_owned(),
                partition: at.partition,
                generation,
            })
        }
        Err(e) => {
            hooks.undecodable(topic, kafka_topic, at, (pairs, value), e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::backend::dead_lettering::DeadLetterWrites;
    use herald::backend::queue::QueueHost;
    use herald::{DeadLetter, Message, Payload, Publish, SubscribeSpec};

    use super::*;

    #[derive(Default)]
    struct Host(DeadLetterWrites);

    impl QueueHost for Host {
        fn max_deliver(&self) -> u32 {
            5
        }

        fn dead_letter(
            &self,
            _: DeadLetter,
        ) -> futures_util::future::BoxFuture<'static, herald::Result<()>> {
            Box::pin(std::future::ready(Ok(())))
        }

        fn dead_letter_writes(&self) -> &DeadLetterWrites {
            &self.0
        }
    }

    fn pending(seq: u64) -> Pending {
        let env = Message::new("t.a", Payload::null())
            .into_envelope(&Arc::from("test"))
            .unwrap()
            .with_seq(seq);
        Pending {
            envelope: Arc::new(env),
            kafka_topic: "env.t.a".into(),
            partition: 0,
            generation: 1,
        }
    }

    /// A queue with room for fewer events than are pending takes as many as
    /// fit, in order; the rest wait.
    #[test]
    fn a_queue_with_some_room_takes_as_many_as_fit() {
        let host: Arc<dyn QueueHost> = Arc::new(Host::default());
        let mut spec = SubscribeSpec::new(vec![herald::Pattern::new("t.>").unwrap()]);
        spec.buffer = 4;
        let queue = Queue::new(spec, Arc::downgrade(&host));
        let mut waiting: VecDeque<Pending> = (1..=2).map(pending).collect();
        hand_over(&queue, &mut waiting);
        assert!(waiting.is_empty());
        assert_eq!(queue.room(), 2);

        let mut waiting: VecDeque<Pending> = (3..=7).map(pending).collect();
        hand_over(&queue, &mut waiting);
        assert_eq!(queue.room(), 0, "the two free places are taken");
        let left: Vec<u64> = waiting.iter().filter_map(|p| p.envelope.seq()).collect();
        assert_eq!(left, vec![5, 6, 7], "in order, after what fit");
    }
}

//! The Kafka store: the connection, the topics herald uses, and publishing.
//!
//! Owns [`KafkaStore`] and its shared `Inner`: one idempotent producer, one
//! admin client, one group-less consumer for metadata, watermarks and
//! offset lookups (librdkafka's blocking calls run on tokio's blocking
//! pool), the set of Kafka topics known to exist (herald creates a topic on
//! its first publish, with `HERALD_KAFKA_PARTITIONS` partitions), the
//! in-process dedupe of idempotency keys, and the open queues (closed with
//! the store). Subscriptions are `tail`'s and `group`'s, dead letters
//! `dead_letters`', the operator's views `inspect`'s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use herald::queue::Queue;
use herald::{Envelope, ErrorCode, Result, Topic};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::codec;
use crate::config::KafkaConfig;
use crate::dedupe::{Claim, Dedupe};
use crate::errors;

/// How long opening waits for a broker to answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a metadata or offset lookup may take.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// herald on Kafka: a [`Transport`](herald::Transport) over the brokers a
/// [`KafkaConfig`] names.
///
/// ```no_run
/// # async fn run() -> herald::Result<()> {
/// use herald_kafka::{KafkaConfig, KafkaStore};
/// let store = KafkaStore::open(KafkaConfig::new("127.0.0.1:9092")).await?;
/// let bus = herald::Bus::new(store);
/// bus.publish(herald::Message::json("orders.placed", &7)?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    me: Weak<Inner>,
    pub(crate) config: KafkaConfig,
    pub(crate) producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata, watermarks and offsets for times; in no group.
    pub(crate) meta: Arc<BaseConsumer>,
    known: Mutex<HashSet<String>>,
    closed: AtomicBool,
    /// Whether the brokers keep offset-commit metadata (Kafka does; tansu
    /// 0.6 drops it), where groups keep what a bare offset cannot.
    pub(crate) keeps_metadata: AtomicBool,
    dedupe: Dedupe,
    queues: Mutex<Vec<Weak<Queue>>>,
    /// This process's group consumers, by group and patterns.
    pub(crate) groups: Mutex<HashMap<String, Weak<crate::group::Group>>>,
    /// Dead-letter writes under way (listing waits for them).
    dead_letter_writes: Arc<tokio::sync::watch::Sender<usize>>,
    /// Consumers of this store still running (`close` waits for them).
    consumers: Arc<tokio::sync::watch::Sender<usize>>,
    /// This process's reply topic, once it made a call.
    pub(crate) replies: std::sync::OnceLock<Arc<crate::commands::Replies>>,
    pub(crate) replies_made: tokio::sync::Mutex<()>,
    /// Who serves which command (read once this process calls one).
    pub(crate) registry: std::sync::OnceLock<Arc<crate::commands::Registry>>,
    /// This process's name in the command registry.
    pub(crate) process: String,
    /// Told of each Kafka topic herald creates, so subscribers in this
    /// process follow it without waiting for a metadata refresh.
    pub(crate) created: tokio::sync::broadcast::Sender<String>,
    /// Watchers of this process's rebalances.
    rebalance_watchers: Mutex<Vec<crate::rebalance::RebalanceCallback>>,
    /// The registry of the (first) instrumented bus on this store.
    pub(crate) metrics: std::sync::OnceLock<herald::metrics::Metrics>,
}

impl KafkaStore {
    /// Connect to the brokers `config` names; `UNAVAILABLE` when none
    /// answers within the configured timeout (capped at 5 s), `VALIDATION`
    /// for a bad setting.
    pub async fn open(config: KafkaConfig) -> Result<KafkaStore> {
        config.validate()?;
        if config.may_lose_publishes() {
            tracing::warn!("HERALD_KAFKA_ACKS=0: publishes are not acknowledged and may be lost without an error");
        }
        let producer: FutureProducer = client_config(config.producer_properties())
            .create()
            .map_err(|e| errors::kafka("create a producer", &e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(config.admin_properties())
            .create()
            .map_err(|e| errors::kafka("create an admin client", &e))?;
        let meta: BaseConsumer = client_config(config.reader_properties())
            .create()
            .map_err(|e| errors::kafka("create a metadata client", &e))?;
        let meta = Arc::new(meta);
        let probe = meta.clone();
        let wait = config.timeout_duration().min(OPEN_TIMEOUT);
        let servers = config.servers().to_owned();
        blocking(move || probe.fetch_metadata(None, wait))
            .await?
            .map_err(|e| {
                herald::Error::new(
                    ErrorCode::Unavailable,
                    format!("Kafka: no broker of {servers} answered within {wait:?}: {e}"),
                )
            })?;
        let (created, _) = tokio::sync::broadcast::channel(256);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            config,
            producer,
            admin,
            meta,
            known: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
            keeps_metadata: AtomicBool::new(true),
            dedupe: Dedupe::default(),
            queues: Mutex::new(Vec::new()),
            groups: Mutex::new(HashMap::new()),
            replies: std::sync::OnceLock::new(),
            replies_made: tokio::sync::Mutex::new(()),
            registry: std::sync::OnceLock::new(),
            process: uuid::Uuid::now_v7().simple().to_string(),
            dead_letter_writes: Arc::new(tokio::sync::watch::channel(0).0),
            consumers: Arc::new(tokio::sync::watch::channel(0).0),
            created,
            rebalance_watchers: Mutex::new(Vec::new()),
            metrics: std::sync::OnceLock::new(),
        });
        // One partition: a letter's id is its offset + 1.
        inner
            .ensure_topic_with(&inner.config.dead_letter_topic(), 1)
            .await?;
        let keeps = keeps_commit_metadata(&inner.config).await?;
        inner.keeps_metadata.store(keeps, Ordering::Release);
        if !keeps {
            tracing::warn!("the Kafka brokers drop offset-commit metadata: events acked after a held one may be delivered again after a restart, and attempts start over");
        }
        Ok(KafkaStore { inner })
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Call `watch` at each rebalance of this process's consumer groups:
    /// partitions assigned to it or revoked from it (each is also logged at
    /// info level). `watch` runs on the group consumer's thread in the
    /// middle of the rebalance: hand the event on, do not block.
    ///
    /// ```no_run
    /// # async fn run() -> herald::Result<()> {
    /// use herald_kafka::{KafkaConfig, KafkaStore, RebalanceKind};
    /// let store = KafkaStore::open(KafkaConfig::new("127.0.0.1:9092")).await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// store.on_rebalance(move |r| {
    ///     let _ = tx.send(r.clone());
    /// });
    /// let bus = herald::Bus::new(store);
    /// let _sub = bus.subscribe_raw("orders.>").group("billing").await?;
    /// let first = rx.recv().await.unwrap();
    /// assert_eq!(first.kind, RebalanceKind::Assigned);
    /// # Ok(()) }
    /// ```
    pub fn on_rebalance(&self, watch: impl Fn(&crate::Rebalanced) + Send + Sync + 'static) {
        self.inner.rebalance_watchers.lock().push(Arc::new(watch));
    }

    /// Create herald topic `topic` (Kafka topic `<environment>.<topic>`)
    /// with `partitions` partitions, as `herald topics create` does; a topic
    /// that exists is left as it is. Publishing creates topics on its own
    /// with `HERALD_KAFKA_PARTITIONS`; this is for a topic that needs
    /// another count. `VALIDATION` for a count outside 1–10,000.
    ///
    /// ```no_run
    /// # async fn run() -> herald::Result<()> {
    /// use herald_kafka::{KafkaConfig, KafkaStore};
    /// let store = KafkaStore::open(KafkaConfig::new("127.0.0.1:9092")).await?;
    /// store.create_topic(&herald::Topic::new("orders.placed")?, 12).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_topic(&self, topic: &herald::Topic, partitions: u32) -> Result<()> {
        herald::config::in_range("partitions", partitions, 1, 10_000)?;
        self.inner.check_open()?;
        let name = self.inner.config.kafka_topic(topic.as_str());
        self.inner
            .ensure_topic_with(&name, i32::try_from(partitions).unwrap_or(i32::MAX))
            .await
    }

    /// Delete herald topic `topic` and every event in it; `NOT_FOUND` when
    /// there is no such topic.
    pub async fn delete_topic(&self, topic: &herald::Topic) -> Result<()> {
        self.inner.check_open()?;
        let name = self.inner.config.kafka_topic(topic.as_str());
        let opts =
            AdminOptions::new().operation_timeout(Some(self.inner.config.timeout_duration()));
        let results = self
            .inner
            .admin
            .delete_topics(&[name.as_str()], &opts)
            .await
            .map_err(|e| errors::kafka(&format!("delete topic `{name}`"), &e))?;
        for r in results {
            if let Err((t, code)) = r {
                return Err(errors::admin("delete topic", &t, code));
            }
        }
        self.inner.known.lock().remove(&name);
        Ok(())
    }

    /// Stop: publishes fail with `UNAVAILABLE`, subscriptions end, every
    /// consumer the store started has left its group and is gone, and
    /// queued publishes are flushed (each up to the timeout).
    ///
    /// Once `close` returns, none of the store's consumers fetches any
    /// more, so the store's topics may be deleted and the process may end
    /// (a fetch of a deleted topic brings some brokers' answers that
    /// librdkafka cannot take, and a process that ends under running
    /// consumers ends them mid-flight). Consumers still running after the
    /// timeout are logged.
    pub async fn close(&self) {
        let first = !self.inner.closed.swap(true, Ordering::AcqRel);
        if first {
            for q in std::mem::take(&mut *self.inner.queues.lock()) {
                if let Some(q) = q.upgrade() {
                    q.close();
                }
            }
        }
        let wait = self.inner.config.timeout_duration();
        let mut running = self.inner.consumers.subscribe();
        let stopped = tokio::time::timeout(wait, running.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !stopped {
            let left = *running.borrow();
            tracing::warn!(
                consumers = left,
                "Kafka: consumers of a closing store did not stop within {wait:?}"
            );
        }
        if first {
            let producer = self.inner.producer.clone();
            let _ = blocking(move || producer.flush(wait)).await;
        }
    }
}

/// Whether the brokers keep the metadata of an offset commit: commit one
/// in a probe group on the dead-letter topic and read it back.
async fn keeps_commit_metadata(config: &KafkaConfig) -> Result<bool> {
    let probe: BaseConsumer =
        client_config(config.consumer_properties(&config.kafka_topic("_probe")))
            .create()
            .map_err(|e| errors::kafka("create a probe", &e))?;
    let topic = config.dead_letter_topic();
    blocking(move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(0))?;
        if let Some(mut e) = tpl.find_partition(&topic, 0) {
            e.set_metadata("h1:probe");
        }
        probe.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        let mut ask = rdkafka::TopicPartitionList::new();
        ask.add_partition(&topic, 0);
        let got = probe.committed_offsets(ask, LOOKUP_TIMEOUT)?;
        let kept = got.find_partition(&topic, 0).is_some_and(|e| {
            std::panic::catch_unwind(|| e.metadata() == "h1:probe").unwrap_or(false)
        });
        Ok(kept)
    })
    .await?
    .map_err(|e: rdkafka::error::KafkaError| errors::kafka("probe the brokers' offset commits", &e))
}

/// A librdkafka client configuration of `properties` (one of
/// [`KafkaConfig`]'s property maps), for a plain rdkafka client with
/// herald's settings.
pub fn client_config(properties: std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Run a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| herald::Error::internal(format!("a Kafka call did not finish: {e}")))
}

impl Inner {
    pub(crate) fn me(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(errors::closed());
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tell the rebalance watchers.
    pub(crate) fn rebalanced(&self, event: &crate::Rebalanced) {
        let watchers = self.rebalance_watchers.lock().clone();
        for w in watchers {
            w(event);
        }
    }

    /// Count a consumer as running until the guard drops: its thread holds
    /// the guard and drops it once the consumer is gone, and `close` waits
    /// for every one. Taken before the consumer is made; refused once the
    /// store closes (under the lock `close` takes the queues with, so a
    /// consumer is either refused or waited for).
    pub(crate) fn consumer_started(&self) -> Result<ConsumerGuard> {
        let _queues = self.queues.lock();
        if self.is_closed() {
            return Err(errors::closed());
        }
        self.consumers.send_modify(|n| *n += 1);
        Ok(ConsumerGuard(self.consumers.clone()))
    }

    /// Close `queue` with the store.
    pub(crate) fn register(&self, queue: &Arc<Queue>) -> Result<()> {
        let mut queues = self.queues.lock();
        // Checked under the lock `close` takes the queues with: a queue
        // registered after that is refused here, never left open.
        if self.is_closed() {
            drop(queues);
            queue.close();
            return Err(errors::closed());
        }
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(queue));
        Ok(())
    }

    /// The herald topic of Kafka topic `name`, when it is one of this
    /// environment's (not the dead letters, not herald's own `_` topics).
    pub(crate) fn topic_of(&self, name: &str) -> Option<Topic> {
        let rest = name
            .strip_prefix(self.config.environment_name())?
            .strip_prefix('.')?;
        if rest.starts_with('_') || name == self.config.dead_letter_topic() {
            return None;
        }
        Topic::new(rest).ok()
    }

    /// Make sure Kafka topic `name` exists (created with the configured
    /// partitions and the brokers' default replication when it does not).
    pub(crate) async fn ensure_topic(&self, name: &str) -> Result<()> {
        let partitions = i32::try_from(self.config.partition_count()).unwrap_or(i32::MAX);
        self.ensure_topic_with(name, partitions).await
    }

    /// [`ensure_topic`](Self::ensure_topic) with `partitions` partitions.
    pub(crate) async fn ensure_topic_with(&self, name: &str, partitions: i32) -> Result<()> {
        if self.known.lock().contains(name) {
            return Ok(());
        }
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        let opts = AdminOptions::new().operation_timeout(Some(self.config.timeout_duration()));
        let results = self
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| errors::kafka(&format!("create topic `{name}`"), &e))?;
        let mut made = false;
        for r in results {
            match r {
                Ok(_) => made = true,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(errors::admin("create topic", &t, code)),
            }
        }
        self.wait_for_leaders(name).await?;
        self.known.lock().insert(name.to_owned());
        if made {
            let _ = self.created.send(name.to_owned());
        }
        Ok(())
    }

    /// Wait until the metadata of Kafka topic `name` shows its partitions
    /// with leaders (a new topic takes a moment).
    async fn wait_for_leaders(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.config.timeout_duration();
        loop {
            let n = self.partitions(name).await?;
            if n > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(herald::Error::new(
                    ErrorCode::Timeout,
                    format!("Kafka: topic `{name}` has no partition leaders yet"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many partitions with a leader Kafka topic `name` has (0 when it
    /// does not exist).
    pub(crate) async fn partitions(&self, name: &str) -> Result<usize> {
        let meta = self.meta.clone();
        let topic = name.to_owned();
        let md = blocking(move || meta.fetch_metadata(Some(&topic), LOOKUP_TIMEOUT))
            .await?
            .map_err(|e| errors::kafka(&format!("read the metadata of `{name}`"), &e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().iter().filter(|p| p.leader() >= 0).count())
            .sum())
    }

    /// Every Kafka topic on the brokers, with its partition count.
    pub(crate) async fn all_topics(&self) -> Result<Vec<(String, i32)>> {
        let meta = self.meta.clone();
        let md = blocking(move || meta.fetch_metadata(None, LOOKUP_TIMEOUT))
            .await?
            .map_err(|e| errors::kafka("list topics", &e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }

    /// The (low, high) watermarks of a partition: its first retained offset
    /// and the offset the next record gets.
    pub(crate) async fn watermarks(&self, name: &str, partition: i32) -> Result<(i64, i64)> {
        let meta = self.meta.clone();
        let topic = name.to_owned();
        blocking(move || meta.fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT))
            .await?
            .map_err(|e| errors::kafka(&format!("read the offsets of `{name}`"), &e))
    }

    /// Append `batch`; each event's `seq` is its offset + 1 in its partition.
    pub(crate) async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        self.check_open()?;
        let names: Vec<String> = batch
            .iter()
            .map(|e| self.config.kafka_topic(e.topic().as_str()))
            .collect();
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        for name in &distinct {
            self.ensure_topic(name).await?;
        }
        let window = self.config.dedupe_duration();
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
                    match self.dedupe.claim(key, window) {
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
                let sent = match codec::encode(env, self.config.deliveries()) {
                    Ok(record) => self.send(&names[i], &record).await,
                    Err(e) => Err(e),
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
                            herald::Error::new(
                                ErrorCode::Unavailable,
                                "Kafka: the producer went away",
                            )
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
        &self,
        topic: &str,
        record: &codec::Record,
    ) -> Result<rdkafka::producer::DeliveryFuture> {
        let deadline = Instant::now() + self.config.timeout_duration();
        loop {
            let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .payload(&record.value[..])
                .headers(record.headers.clone());
            if let Some(k) = &record.key {
                r = r.key(k.as_str());
            }
            match self.producer.send_result(r) {
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

    /// Count a dead-letter write as under way until the guard drops (taken
    /// before the write's task is spawned, so a listing that follows sees it).
    pub(crate) fn dead_letter_started(&self) -> WriteGuard {
        self.dead_letter_writes.send_modify(|n| *n += 1);
        WriteGuard(self.dead_letter_writes.clone())
    }

    /// Wait until every dead letter being written is written.
    pub(crate) async fn dead_letters_written(&self) {
        let mut rx = self.dead_letter_writes.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// A consumer that may still fetch (see [`Inner::consumer_started`]).
pub(crate) struct ConsumerGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A dead-letter write under way (see [`Inner::dead_letter_started`]).
pub(crate) struct WriteGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

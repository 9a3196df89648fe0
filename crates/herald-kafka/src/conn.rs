//! The connection to the brokers and the state every part of the store
//! shares: the bottom of the crate.
//!
//! Owns `Inner` — one idempotent producer, one admin client, one group-less
//! consumer for metadata, watermarks and offset lookups (librdkafka's
//! blocking calls run on tokio's blocking pool, [`blocking`]), the set of
//! Kafka topics known to exist, the in-process dedupe of idempotency keys,
//! the open queues and running consumers (closed and waited for with the
//! store), the rebalance watchers, and the slots the command and group
//! modules keep their per-store state in. Also owns connecting
//! ([`Inner::connect`]), closing ([`Inner::close`]), making and deleting
//! topics (herald creates a topic on its first publish, with
//! `HERALD_KAFKA_PARTITIONS` partitions), metadata and watermark lookups,
//! and [`client_config`].
//!
//! Does not own producing or reading records (`log`), subscriptions
//! (`tail`, `group`), dead letters, commands or the public handle
//! (`store`). Imports only the crate's leaves (`config`, `errors`,
//! `dedupe`, `rebalance`, `command_state`): the group registry holds its
//! groups as `Any`, so this module never names `group`'s type.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use herald::backend::dead_lettering::{DeadLetterWrites, DEAD_LETTER_WRITE_WAIT};
use herald::backend::open_queues::OpenQueues;
use herald::backend::partition_of;
use herald::backend::queue::Queue;
use herald::config::KeylessPartition;
use herald::{ErrorCode, Result, Topic};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};

use crate::command_state::{Registry, Replies};
use crate::config::KafkaConfig;
use crate::dedupe::Dedupe;
use crate::errors;
use crate::rebalance::{RebalanceCallback, Rebalanced};

/// How long opening waits for a TCP connection to one of the bootstrap
/// servers: none accepting one within it is `UNAVAILABLE` at once. A
/// broker that accepts gets the configured timeout to answer for its
/// metadata (a broker on a loaded machine can take seconds).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a metadata or offset lookup may take.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The state a store's handles, subscriptions and background tasks share.
pub(crate) struct Inner {
    me: Weak<Inner>,
    pub(crate) config: KafkaConfig,
    pub(crate) producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata, watermarks and offsets for times; in no group.
    pub(crate) meta: Arc<BaseConsumer>,
    known: Mutex<HashSet<String>>,
    /// The partition each Kafka topic's keyless events go to, under
    /// [`KeylessPartition::Topic`] (read once per topic and process).
    keyless_partitions: Mutex<HashMap<String, i32>>,
    closed: AtomicBool,
    /// Whether the brokers keep offset-commit metadata (Kafka does; tansu
    /// 0.6 drops it), where groups keep what a bare offset cannot.
    pub(crate) keeps_metadata: AtomicBool,
    pub(crate) dedupe: Dedupe,
    /// The schema registry as last read (`contracts`), with the end offset
    /// of its topic then: read again only when the topic grew.
    pub(crate) schemas: Mutex<Option<(i64, Vec<herald::backend::schemas::Subject>)>>,
    queues: OpenQueues,
    /// This process's group consumers, by group and patterns: `group`'s
    /// `Group`s, held as `Any` so the connection does not know their type
    /// (`group` puts them here and takes them back out).
    pub(crate) groups: Mutex<HashMap<String, Weak<dyn Any + Send + Sync>>>,
    /// Dead-letter writes under way (listing waits for them).
    pub(crate) dead_letter_writes: DeadLetterWrites,
    /// Consumers of this store still running (`close` waits for them).
    consumers: Arc<tokio::sync::watch::Sender<usize>>,
    /// This process's reply topic, once it made a call.
    pub(crate) replies: std::sync::OnceLock<Arc<Replies>>,
    pub(crate) replies_made: tokio::sync::Mutex<()>,
    /// Who serves which command (read once this process calls one).
    pub(crate) registry: std::sync::OnceLock<Arc<Registry>>,
    /// This process's name in the command registry.
    pub(crate) process: String,
    /// Told of each Kafka topic herald creates, so subscribers in this
    /// process follow it without waiting for a metadata refresh.
    pub(crate) created: tokio::sync::broadcast::Sender<String>,
    /// Watchers of this process's rebalances.
    rebalance_watchers: Mutex<Vec<RebalanceCallback>>,
    /// The registry of the (first) instrumented bus on this store.
    pub(crate) metrics: std::sync::OnceLock<herald::backend::Metrics>,
    /// Kept or discarded (`HERALD_DEAD_LETTERS=off`), each dead letter.
    pub(crate) discards: herald::backend::dead_lettering::Discards,
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

/// Whether the brokers keep the metadata of an offset commit: commit one
/// in a probe group on the dead-letter topic and read it back.
pub(crate) async fn keeps_commit_metadata(config: &KafkaConfig) -> Result<bool> {
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

/// Whether any of the comma-separated `host:port` bootstrap servers
/// accepts a TCP connection within `wait`.
fn any_listening(servers: &str, wait: Duration) -> bool {
    use std::net::ToSocketAddrs;
    servers
        .split(',')
        .map(|s| s.trim())
        .map(|s| s.rsplit_once("://").map_or(s, |(_, rest)| rest))
        .filter_map(|s| s.to_socket_addrs().ok())
        .flatten()
        .any(|addr| std::net::TcpStream::connect_timeout(&addr, wait).is_ok())
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
    /// Make the clients `config` (already validated) names and check that a
    /// broker answers: `UNAVAILABLE` when no bootstrap server accepts a TCP
    /// connection within 5 s, or none answers for its metadata within the
    /// configured timeout.
    pub(crate) async fn connect(config: KafkaConfig) -> Result<Arc<Inner>> {
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
        let servers = config.servers().to_owned();
        let listening = {
            let servers = servers.clone();
            blocking(move || any_listening(&servers, CONNECT_TIMEOUT)).await?
        };
        if !listening {
            return Err(herald::Error::new(
                ErrorCode::Unavailable,
                format!("Kafka: no broker of {servers} accepts connections"),
            ));
        }
        let wait = config.timeout_duration();
        blocking(move || probe.fetch_metadata(None, wait))
            .await?
            .map_err(|e| {
                herald::Error::new(
                    ErrorCode::Unavailable,
                    format!("Kafka: no broker of {servers} answered within {wait:?}: {e}"),
                )
            })?;
        let (created, _) = tokio::sync::broadcast::channel(256);
        let discards = herald::backend::dead_lettering::Discards::new(config.dead_letters());
        Ok(Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            config,
            producer,
            admin,
            meta,
            known: Mutex::new(HashSet::new()),
            keyless_partitions: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            keeps_metadata: AtomicBool::new(true),
            dedupe: Dedupe::default(),
            schemas: Mutex::new(None),
            queues: OpenQueues::default(),
            groups: Mutex::new(HashMap::new()),
            replies: std::sync::OnceLock::new(),
            replies_made: tokio::sync::Mutex::new(()),
            registry: std::sync::OnceLock::new(),
            process: uuid::Uuid::now_v7().simple().to_string(),
            dead_letter_writes: DeadLetterWrites::default(),
            consumers: Arc::new(tokio::sync::watch::channel(0).0),
            created,
            rebalance_watchers: Mutex::new(Vec::new()),
            metrics: std::sync::OnceLock::new(),
            discards,
        }))
    }

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

    /// Stop: publishes fail, queues close, and — up to the timeout — every
    /// consumer is waited for until gone, then the dead letters being
    /// written, then (on the first close) the producer's queue is flushed.
    pub(crate) async fn close(&self) {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        if first {
            self.queues.close();
        }
        let wait = self.config.timeout_duration();
        let mut running = self.consumers.subscribe();
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
        self.dead_letters_written().await;
        if first {
            let producer = self.producer.clone();
            let _ = blocking(move || producer.flush(wait)).await;
        }
    }

    /// Call `watch` at each rebalance (see [`rebalanced`](Self::rebalanced)).
    pub(crate) fn watch_rebalances(&self, watch: RebalanceCallback) {
        self.rebalance_watchers.lock().push(watch);
    }

    /// Tell the rebalance watchers.
    pub(crate) fn rebalanced(&self, event: &Rebalanced) {
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
        self.queues
            .while_open(|_| {
                self.consumers.send_modify(|n| *n += 1);
                ConsumerGuard(self.consumers.clone())
            })
            .ok_or_else(errors::closed)
    }

    /// Close `queue` with the store.
    pub(crate) fn register(&self, queue: &Arc<Queue>) -> Result<()> {
        if self.queues.register(queue) {
            Ok(())
        } else {
            Err(errors::closed())
        }
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
    /// partitions, replication factor and `min.insync.replicas`, the
    /// brokers' defaults where none is set, when it does not).
    pub(crate) async fn ensure_topic(&self, name: &str) -> Result<()> {
        let partitions = i32::try_from(self.config.partition_count()).unwrap_or(i32::MAX);
        self.ensure_topic_with(name, partitions).await
    }

    /// [`ensure_topic`](Self::ensure_topic) with `partitions` partitions.
    pub(crate) async fn ensure_topic_with(&self, name: &str, partitions: i32) -> Result<()> {
        self.ensure_topic_configured(name, partitions, &[]).await
    }

    /// [`ensure_topic_with`](Self::ensure_topic_with), making it with the
    /// topic settings `configs` (a topic already there keeps its own).
    pub(crate) async fn ensure_topic_configured(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        if self.known.lock().contains(name) {
            return Ok(());
        }
        let replication = self
            .config
            .replication()
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(-1);
        let min_insync = self.config.min_insync().map(|n| n.to_string());
        let topic = configs
            .iter()
            .copied()
            .chain(min_insync.as_deref().map(|n| ("min.insync.replicas", n)))
            .fold(
                NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            );
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

    /// Delete Kafka topic `name` and every record in it; `NOT_FOUND` when
    /// there is no such topic.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(self.config.timeout_duration()));
        let results = self
            .admin
            .delete_topics(&[name], &opts)
            .await
            .map_err(|e| errors::kafka(&format!("delete topic `{name}`"), &e))?;
        for r in results {
            if let Err((t, code)) = r {
                return Err(errors::admin("delete topic", &t, code));
            }
        }
        self.known.lock().remove(name);
        Ok(())
    }

    /// Raise Kafka topic `name` to `count` partitions (CreatePartitions),
    /// and wait until its metadata shows them with leaders. Returns the
    /// count it had. `NOT_FOUND` without such a topic, `VALIDATION` for a
    /// lower count (Kafka cannot take partitions away); the same count is
    /// nothing to do.
    pub(crate) async fn grow_topic(&self, name: &str, count: usize) -> Result<usize> {
        let had = self.partitions(name).await?;
        if had == 0 {
            return Err(herald::Error::new(
                ErrorCode::NotFound,
                format!("Kafka: no topic `{name}`"),
            ));
        }
        if count < had {
            return Err(herald::config::invalid(
                "partitions",
                count,
                &format!("at least the {had} `{name}` has: Kafka cannot take partitions away"),
            ));
        }
        if count == had {
            return Ok(had);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.config.timeout_duration()));
        let grow = NewPartitions::new(name, count);
        let results = self
            .admin
            .create_partitions([&grow], &opts)
            .await
            .map_err(|e| errors::kafka(&format!("add partitions to `{name}`"), &e))?;
        for r in results {
            if let Err((t, code)) = r {
                return Err(errors::admin("add partitions to", &t, code));
            }
        }
        let deadline = Instant::now() + self.config.timeout_duration();
        while self.partitions(name).await? < count {
            if Instant::now() >= deadline {
                return Err(herald::Error::new(
                    ErrorCode::Timeout,
                    format!("Kafka: `{name}` does not show {count} partitions with leaders yet"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(had)
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

    /// The partition Kafka topic `name`'s keyless events go to: `None`
    /// when they spread ([`KeylessPartition::Spread`]: the producer picks),
    /// else the one its name hashes to among the partitions it had when
    /// this process first published to it (a topic grown later keeps that
    /// partition here until a restart).
    pub(crate) async fn keyless_partition(&self, name: &str) -> Result<Option<i32>> {
        if self.config.keyless() == KeylessPartition::Spread {
            return Ok(None);
        }
        if let Some(p) = self.keyless_partitions.lock().get(name) {
            return Ok(Some(*p));
        }
        let count = u32::try_from(self.partitions(name).await?).unwrap_or(u32::MAX);
        let p = partition_of(name.as_bytes(), count) as i32;
        self.keyless_partitions.lock().insert(name.to_owned(), p);
        Ok(Some(p))
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

    /// Wait (up to `DEAD_LETTER_WRITE_WAIT`) for the dead letters being
    /// written.
    pub(crate) async fn dead_letters_written(&self) {
        self.dead_letter_writes
            .settled(DEAD_LETTER_WRITE_WAIT)
            .await;
    }
}

/// A consumer that may still fetch (see [`Inner::consumer_started`]).
pub(crate) struct ConsumerGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

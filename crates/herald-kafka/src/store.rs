//! The public handle: [`KafkaStore`], opening and closing it, and its own
//! inherent methods (rebalance watchers, creating and deleting topics).
//!
//! The top of the crate with `transport`: it holds an `Arc<conn::Inner>`
//! and delegates — connecting, closing, topic administration are `conn`'s,
//! the `herald::Transport` and `herald::Inspect` impls `transport`'s. No
//! module imports it but `transport` and `lib`; lower modules are handed
//! the `Inner`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald::Result;

use crate::config::KafkaConfig;
use crate::conn::{self, Inner};
use crate::rebalance::Rebalanced;

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

impl KafkaStore {
    /// A dedupe store on these brokers remembering the ids each handler
    /// group processed for `window` (1 ms – 7 days), on the topic
    /// `<environment>._processed`; [`herald::dedupe::Dedupe::in_store`]
    /// makes the same.
    pub fn dedupe(&self, window: std::time::Duration) -> Result<crate::KafkaDedupe> {
        crate::KafkaDedupe::new(self.inner.clone(), window)
    }

    /// The store's schema registry: what [`Bus::schemas`](herald::Bus::schemas)
    /// registers into and every publish on a bus over it is checked
    /// against.
    pub fn schemas(&self) -> crate::KafkaSchemas {
        crate::KafkaSchemas::new(self.inner.clone())
    }

    /// Connect to the brokers `config` names; `UNAVAILABLE` when none
    /// answers within the configured timeout (capped at 5 s), `VALIDATION`
    /// for a bad setting.
    pub async fn open(config: KafkaConfig) -> Result<KafkaStore> {
        config.validate()?;
        if config.may_lose_publishes() {
            tracing::warn!("HERALD_KAFKA_ACKS=0: publishes are not acknowledged and may be lost without an error");
        }
        let inner = Inner::connect(config).await?;
        // One partition: a letter's id is its offset + 1.
        inner
            .ensure_topic_with(&inner.config.dead_letter_topic(), 1)
            .await?;
        let keeps = conn::keeps_commit_metadata(&inner.config).await?;
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
    pub fn on_rebalance(&self, watch: impl Fn(&Rebalanced) + Send + Sync + 'static) {
        self.inner.watch_rebalances(Arc::new(watch));
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

    /// Raise herald topic `topic` to `partitions` partitions, as `herald
    /// topics partitions` does, and return how many it had. Kafka cannot
    /// lower a count: a lower one is `VALIDATION`, the same one nothing to
    /// do, a topic that does not exist `NOT_FOUND`; 1–10,000.
    ///
    /// Per-key order across the change: a key's partition is its hash
    /// modulo the count, so after raising it most keys map to another
    /// partition. Events of a key published before the change sit in its
    /// old partition, later ones in its new one, and a group may deliver a
    /// later one first while it drains the old. Raise the count while the
    /// topic's publishers are paused and its groups have caught up, or
    /// accept that a key's order holds again only from the change on.
    ///
    /// ```no_run
    /// # async fn run() -> herald::Result<()> {
    /// use herald_kafka::{KafkaConfig, KafkaStore};
    /// let store = KafkaStore::open(KafkaConfig::new("127.0.0.1:9092")).await?;
    /// let had = store.grow_partitions(&herald::Topic::new("orders.placed")?, 24).await?;
    /// # let _ = had; Ok(()) }
    /// ```
    pub async fn grow_partitions(&self, topic: &herald::Topic, partitions: u32) -> Result<u32> {
        herald::config::in_range("partitions", partitions, 1, 10_000)?;
        self.inner.check_open()?;
        let name = self.inner.config.kafka_topic(topic.as_str());
        let had = self.inner.grow_topic(&name, partitions as usize).await?;
        Ok(had as u32)
    }

    /// Delete herald topic `topic` and every event in it; `NOT_FOUND` when
    /// there is no such topic.
    pub async fn delete_topic(&self, topic: &herald::Topic) -> Result<()> {
        self.inner.check_open()?;
        let name = self.inner.config.kafka_topic(topic.as_str());
        self.inner.delete_topic(&name).await
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
        self.inner.close().await;
    }
}

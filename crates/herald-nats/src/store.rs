//! The NATS store's public handle: the top of the crate.
//!
//! Owns [`NatsStore`]: opening it (connect, make the dead-letter stream),
//! closing it (readers stop, this process's group leaders step down, dead
//! letters under way are waited for, what was sent is flushed) and its
//! public inherent methods, which delegate to the modules below. It holds
//! no logic of its own: the connection and shared state are `conn`'s,
//! topic streams `log`'s, groups `group`'s; the `Transport` and `Inspect`
//! impls are `transport`'s. Only `transport` and `lib` import it; a module
//! below that needs the store takes `Arc<Inner>`.

use std::sync::Arc;

use herald::{Result, Topic};

use crate::config::NatsConfig;
use crate::conn::Inner;
use crate::processed::NatsDedupe;

/// herald on NATS JetStream; clones share one connection.
///
/// ```no_run
/// use herald::{Bus, Message, Payload};
/// use herald_nats::{NatsConfig, NatsStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let store = NatsStore::open(NatsConfig::new("nats://127.0.0.1:4222")).await?;
/// let bus = Bus::new(store);
/// let seq = bus.publish(Message::new("orders.placed", Payload::null())).await?;
/// assert!(seq[0] >= 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsStore {
    pub(crate) inner: Arc<Inner>,
}

impl NatsStore {
    /// Connect to NATS and make sure the dead-letter stream exists.
    /// `UNAVAILABLE` when the server cannot be reached.
    pub async fn open(config: NatsConfig) -> Result<NatsStore> {
        config.validate()?;
        let inner = Inner::connect(config).await?;
        crate::dead_letters::prepare(&inner).await?;
        Ok(NatsStore { inner })
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        self.inner.check_open()?;
        crate::log::last_seq(&self.inner, topic).await
    }

    /// Make sure `topic`'s stream exists with the configured limits, so
    /// plain NATS clients can publish to its subject before herald has.
    pub async fn ensure_topic(&self, topic: &Topic) -> Result<()> {
        self.inner.check_open()?;
        crate::log::ensure_stream(&self.inner, topic).await?;
        Ok(())
    }

    /// The plain subject of `topic`, where plain NATS clients publish to
    /// it. herald publishes its own events on the topic's partition
    /// subjects ([`NatsStore::partition_subjects`]), spread by key; both
    /// are subjects of the topic's stream, so a JetStream consumer of the
    /// stream reads every event of the topic in `seq` order.
    pub fn subject(&self, topic: &Topic) -> String {
        self.inner.names.subject(topic.as_str())
    }

    /// The subject filter of `topic`'s partitions, where herald publishes
    /// its events: `<prefix>.$part.<n>.<topic>`, `n` below the topic's
    /// partitions ([`NatsConfig::partitions`](crate::NatsConfig::partitions))
    /// from a hash of the event's key (of its id when it has none). A core
    /// NATS subscriber follows a topic on this and [`NatsStore::subject`].
    pub fn partition_subjects(&self, topic: &Topic) -> String {
        self.inner.names.partition_subjects(topic.as_str())
    }

    /// A dedupe store on this server remembering the ids each handler
    /// group processed for `window` (1 s – 7 days), in a key-value bucket;
    /// [`herald::dedupe::Dedupe::in_store`] makes the same.
    pub fn dedupe(&self, window: std::time::Duration) -> Result<NatsDedupe> {
        NatsDedupe::new(self.inner.clone(), window)
    }

    /// The store's schema registry: what [`Bus::schemas`](herald::Bus::schemas)
    /// registers into and every publish on a bus over it is checked
    /// against.
    pub fn schemas(&self) -> crate::NatsSchemas {
        crate::NatsSchemas::new(self.inner.clone())
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Stop: later calls fail with `UNAVAILABLE`, readers stop, and
    /// what was sent is flushed. Idempotent.
    pub async fn close(&self) {
        if !self.inner.shut() {
            return;
        }
        crate::group::step_down_all(&self.inner).await;
        self.inner.dead_letters_written().await;
        // A flush that fails has nothing left to deliver to.
        let _ = self.inner.client.flush().await;
    }
}

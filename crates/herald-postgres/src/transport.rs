//! `Transport` and `Inspect` for `PgStore`, and the group-vs-tail dispatch.
//!
//! Owns the trait impls and [`FEATURES`]: `subscribe` sends a spec with a
//! group to `group`, one without to `tail`. What the methods do is the
//! other modules': appending `log`'s (through `PgStore::append`), reading
//! `inspect`'s, dead letters `dead_letters`'; the store's state as its
//! queues' host is `dead_letters`' too.

use herald::{
    DeadLetter, DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Inspect, Result,
    StartPosition, SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use std::sync::atomic::Ordering;

use crate::store::PgStore;

/// What the PostgreSQL store gives: durable groups and dead letters,
/// history, priority.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.exact_resume = true;
    f.contracts = true;
    f
};

impl Transport for PgStore {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        self.append(batch).await
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Subscription> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(crate::conn::closed());
        }
        spec.validate()?;
        if spec.group.is_some() {
            return crate::group::subscribe(&self.inner, spec).await;
        }
        crate::tail::subscribe(&self.inner, spec).await
    }

    async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        PgStore::last_seq(self, topic).await
    }

    async fn close(&self) -> Result<()> {
        PgStore::close(self).await;
        Ok(())
    }

    fn features(&self) -> Features {
        FEATURES
    }

    fn attach_metrics(&self, metrics: &herald::backend::Metrics) {
        self.inner.discards.attach(metrics);
    }

    fn processed_ids(
        &self,
        window: std::time::Duration,
    ) -> Result<std::sync::Arc<dyn herald::backend::DedupeStore>> {
        Ok(std::sync::Arc::new(self.dedupe(window)?))
    }

    fn schemas(&self) -> Result<std::sync::Arc<dyn herald::backend::schemas::SchemaStore>> {
        Ok(std::sync::Arc::new(PgStore::schemas(self)))
    }
}

impl Inspect for PgStore {
    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        crate::inspect::topics(&self.inner.pool, &self.inner.s).await
    }

    async fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        PgStore::replay(self, topic.as_str(), from, limit).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>> {
        crate::inspect::groups(&self.inner).await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        crate::dead_letters::flush(&self.inner).await;
        crate::dead_letters::list(&self.inner, filter).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        crate::dead_letters::flush(&self.inner).await;
        crate::dead_letters::purge(&self.inner, filter).await
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        crate::dead_letters::flush(&self.inner).await;
        crate::inspect::delivery_state(&self.inner, topic, seq, group).await
    }
}

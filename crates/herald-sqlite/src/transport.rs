//! [`herald::Transport`] and [`herald::Inspect`] for the SQLite store.
//!
//! Owns the trait impls on [`SqliteStore`], [`FEATURES`], and the dispatch
//! of `subscribe`: a spec with a group goes to `member`, one without to
//! `tail`. Does not own the SQL behind any method: the reads are `inspect`'s,
//! dead letters `dead_letters`', appends the writer's (through `store`).

use herald::{
    DeadLetter, DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Inspect, Result,
    StartPosition, SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use std::sync::atomic::Ordering;

use crate::conn::closed;
use crate::store::SqliteStore;
use crate::{dead_letters, inspect, member, tail};

/// What the SQLite store gives: durable, with full history, with priority.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.exact_resume = true;
    f.contracts = true;
    f
};

impl Transport for SqliteStore {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        self.append(batch).await
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Subscription> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        spec.validate()?;
        if spec.group.is_some() {
            return member::subscribe(&self.inner, spec).await;
        }
        tail::subscribe(&self.inner, spec).await
    }

    async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        SqliteStore::last_seq(self, topic).await
    }

    async fn close(&self) -> Result<()> {
        SqliteStore::close(self).await;
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
        Ok(std::sync::Arc::new(self.schemas()))
    }
}

impl Inspect for SqliteStore {
    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        SqliteStore::topics(self).await
    }

    async fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        SqliteStore::replay(self, topic.as_str(), from, limit).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>> {
        inspect::flush(&self.inner).await?;
        inspect::groups(self.inner.readers.clone()).await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        inspect::flush(&self.inner).await?;
        dead_letters::list(self.inner.readers.clone(), filter.clone()).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        inspect::flush(&self.inner).await?;
        dead_letters::purge(&self.inner, filter.clone()).await
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        inspect::delivery_state(
            self.inner.readers.clone(),
            topic.clone(),
            seq,
            group.to_owned(),
        )
        .await
    }
}

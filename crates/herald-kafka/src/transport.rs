//! `herald::Transport` and `herald::Inspect` for [`KafkaStore`], and
//! [`FEATURES`]: each call is handed on to the module that owns it —
//! publishing to `log`, a subscription to `group` when it names a group and
//! to `tail` when not (the one place that dispatch happens), commands to
//! `commands`, the operator's views to `inspect` and `dead_letters`.
//!
//! The top of the crate with `store`; owns none of the work itself (not
//! even the queue host of group-less subscriptions, which is `tail`'s).

use herald::backend::BoxFuture;
use herald::DeadLetter;
use herald::{
    DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Inspect, Result, StartPosition,
    SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use crate::store::KafkaStore;
use crate::{commands, dead_letters, group, inspect, log, tail};

/// What the Kafka store gives: durable topics with history. Priority
/// reorders only what a subscriber has buffered. `seq` is per partition;
/// see [`KafkaStore::features`] for when it is per topic.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.contracts = true;
    f
};

impl Transport for KafkaStore {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        log::append(&self.inner, batch).await
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Subscription> {
        self.inner.check_open()?;
        spec.validate()?;
        if spec.group.is_some() {
            return group::subscribe(&self.inner, spec).await;
        }
        tail::subscribe(&self.inner, spec).await
    }

    async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        self.inner.check_open()?;
        inspect::last_seq(&self.inner, topic).await
    }

    async fn close(&self) -> Result<()> {
        KafkaStore::close(self).await;
        Ok(())
    }

    /// [`FEATURES`], with `exact_resume` when the brokers keep offset-commit
    /// metadata (Kafka does; tansu 0.6 does not).
    fn features(&self) -> Features {
        let mut f = FEATURES;
        f.exact_resume = self
            .inner
            .keeps_metadata
            .load(std::sync::atomic::Ordering::Acquire);
        f
    }

    fn export_command(
        &self,
        topic: &Topic,
        serve: herald::backend::transport::CommandServe,
    ) -> Option<herald::backend::transport::CommandExport> {
        Some(commands::export(&self.inner, topic, serve))
    }

    fn call(
        &self,
        command: Envelope,
        timeout: std::time::Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        Some(commands::call(&self.inner, command, timeout))
    }

    fn attach_metrics(&self, metrics: &herald::backend::Metrics) {
        let _ = self.inner.metrics.set(metrics.clone());
        self.inner.discards.attach(metrics);
    }

    fn processed_ids(
        &self,
        window: std::time::Duration,
    ) -> Result<std::sync::Arc<dyn herald::backend::DedupeStore>> {
        Ok(std::sync::Arc::new(self.dedupe(window)?))
    }

    fn schemas(&self) -> Result<std::sync::Arc<dyn herald::backend::schemas::SchemaStore>> {
        Ok(std::sync::Arc::new(KafkaStore::schemas(self)))
    }
}

impl Inspect for KafkaStore {
    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.check_open()?;
        inspect::topics(&self.inner).await
    }

    async fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        self.inner.check_open()?;
        inspect::replay(&self.inner, topic, from, limit).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.inner.check_open()?;
        inspect::groups(&self.inner).await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters_written().await;
        dead_letters::list(&self.inner, filter).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.inner.dead_letters_written().await;
        dead_letters::purge(&self.inner, filter).await
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        self.inner.check_open()?;
        self.inner.dead_letters_written().await;
        inspect::delivery_state(&self.inner, topic, seq, group).await
    }
}

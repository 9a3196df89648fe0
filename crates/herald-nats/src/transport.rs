//! `Transport` and `Inspect` for `NatsStore`: the top of the crate, beside
//! `store`.
//!
//! Owns the trait impls and the group-vs-tail dispatch of a subscription
//! (with a group: a member of this process's reader of the group,
//! `group`; without: `tail`), and [`FEATURES`]. Every call delegates: the
//! work is in the modules below (`log`, `tail`, `group`, `commands`,
//! `inspect`, `dead_letters`); the store as its queues' host is
//! `dead_letters`'.

use herald::backend::BoxFuture;
use herald::{
    DeadLetter, DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Inspect, Result,
    StartPosition, SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use crate::store::NatsStore;

/// What the NATS store gives: durable streams with history. Priority
/// reorders only what a subscriber has buffered.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.exact_resume = true;
    f.contracts = true;
    f
};

impl Transport for NatsStore {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        crate::log::append(&self.inner, batch).await
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Subscription> {
        self.inner.check_open()?;
        spec.validate()?;
        if spec.group.is_some() {
            return crate::group::subscribe(&self.inner, spec).await;
        }
        crate::tail::subscribe(&self.inner, spec).await
    }

    async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        NatsStore::last_seq(self, topic).await
    }

    async fn close(&self) -> Result<()> {
        NatsStore::close(self).await;
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
        Ok(std::sync::Arc::new(NatsStore::schemas(self)))
    }

    fn export_command(
        &self,
        topic: &Topic,
        serve: herald::backend::transport::CommandServe,
    ) -> Option<herald::backend::transport::CommandExport> {
        Some(crate::commands::export(&self.inner, topic, serve))
    }

    fn call(
        &self,
        command: Envelope,
        timeout: std::time::Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        Some(crate::commands::call(&self.inner, command, timeout))
    }
}

impl Inspect for NatsStore {
    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.check_open()?;
        crate::inspect::topics(&self.inner).await
    }

    async fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        self.inner.check_open()?;
        crate::inspect::replay(&self.inner, topic, from, limit).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.inner.check_open()?;
        crate::inspect::groups(&self.inner).await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters_written().await;
        crate::dead_letters::list(&self.inner, filter).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.inner.dead_letters_written().await;
        crate::dead_letters::purge(&self.inner, filter).await
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        self.inner.check_open()?;
        self.inner.dead_letters_written().await;
        crate::inspect::delivery_state(&self.inner, topic, seq, group).await
    }
}

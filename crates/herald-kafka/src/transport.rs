//! `impl Transport for KafkaStore`, and the store as its group-less
//! subscriptions' queue host.

use herald::dead_letter::DeadLetter;
use herald::delivery::BoxFuture;
use herald::queue::QueueHost;
use herald::{
    DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Result, StartPosition,
    SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use crate::codec::Position;
use crate::store::{Inner, KafkaStore};

/// What the Kafka store gives: durable topics with history. Priority
/// reorders only what a subscriber has buffered. `seq` is per partition;
/// see [`KafkaStore::features`] for when it is per topic.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f
};

impl Transport for KafkaStore {
    fn publish(&self, batch: Vec<Envelope>) -> BoxFuture<'_, Result<Vec<u64>>> {
        Box::pin(self.inner.append(batch))
    }

    fn subscribe(&self, spec: SubscribeSpec) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            self.inner.check_open()?;
            spec.validate()?;
            if spec.group.is_some() {
                return crate::group::subscribe(&self.inner, spec).await;
            }
            crate::tail::subscribe(&self.inner, spec).await
        })
    }

    fn last_seq(&self, topic: &Topic) -> BoxFuture<'_, Result<Option<u64>>> {
        let topic = topic.clone();
        Box::pin(async move {
            self.inner.check_open()?;
            crate::inspect::last_seq(&self.inner, &topic).await
        })
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        Box::pin(async move {
            self.inner.check_open()?;
            crate::inspect::topics(&self.inner).await
        })
    }

    fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Envelope>>> {
        let topic = topic.clone();
        Box::pin(async move {
            self.inner.check_open()?;
            crate::inspect::replay(&self.inner, &topic, from, limit).await
        })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>>> {
        Box::pin(async move {
            self.inner.check_open()?;
            crate::inspect::groups(&self.inner).await
        })
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let filter = filter.clone();
        Box::pin(async move {
            self.inner.dead_letters_written().await;
            crate::dead_letters::list(&self.inner, &filter).await
        })
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<u64>> {
        let filter = filter.clone();
        Box::pin(async move {
            self.inner.dead_letters_written().await;
            crate::dead_letters::purge(&self.inner, &filter).await
        })
    }

    fn delivery_state(
        &self,
        topic: &Topic,
        seq: u64,
        group: &str,
    ) -> BoxFuture<'_, Result<DeliveryState>> {
        let (topic, group) = (topic.clone(), group.to_owned());
        Box::pin(async move {
            self.inner.check_open()?;
            self.inner.dead_letters_written().await;
            crate::group::delivery_state(&self.inner, &topic, seq, &group).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            KafkaStore::close(self).await;
            Ok(())
        })
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
        serve: herald::transport::CommandServe,
    ) -> Option<herald::transport::CommandExport> {
        Some(crate::commands::export(&self.inner, topic, serve))
    }

    fn call(
        &self,
        command: Envelope,
        timeout: std::time::Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        Some(crate::commands::call(&self.inner, command, timeout))
    }

    fn attach_metrics(&self, metrics: &herald::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics.clone());
    }
}

/// Group-less subscriptions settle nothing on the brokers; what they give
/// up on goes to the dead letters.
impl QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) {
        let Some(inner) = self.me() else {
            return;
        };
        let pending = inner.dead_letter_started();
        tokio::spawn(async move {
            let _pending = pending;
            let at = crate::group::partition_of(&letter.envelope).map(|p| Position {
                partition: p,
                offset: letter.envelope.seq().unwrap_or(0) as i64 - 1,
                time_ms: 0,
            });
            crate::group::write_until_done(&inner, &letter, at, None).await;
        });
    }
}

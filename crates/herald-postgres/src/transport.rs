//! `impl Transport for PgStore`, and the store as its queues' host.

use herald::delivery::BoxFuture;
use herald::{
    DeadLetter, DeadLetterFilter, DeliveryState, Envelope, Features, GroupInfo, Result,
    StartPosition, SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use crate::store::{Inner, PgStore};

/// What the PostgreSQL store gives: durable groups and dead letters,
/// history, priority.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.exact_resume = true;
    f
};

impl Transport for PgStore {
    fn publish(&self, batch: Vec<Envelope>) -> BoxFuture<'_, Result<Vec<u64>>> {
        Box::pin(self.append(batch))
    }

    fn subscribe(&self, spec: SubscribeSpec) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(crate::tail::subscribe(&self.inner, spec))
    }

    fn last_seq(&self, topic: &Topic) -> BoxFuture<'_, Result<Option<u64>>> {
        let topic = topic.clone();
        Box::pin(async move { PgStore::last_seq(self, &topic).await })
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        Box::pin(crate::store::topics(&self.inner.pool, &self.inner.s))
    }

    fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Envelope>>> {
        let topic = topic.clone();
        Box::pin(async move { PgStore::replay(self, topic.as_str(), from, limit).await })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>>> {
        Box::pin(crate::group::groups(&self.inner))
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let filter = filter.clone();
        Box::pin(async move {
            crate::dead_letters::flush(&self.inner).await;
            crate::dead_letters::list(&self.inner, &filter).await
        })
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<u64>> {
        let filter = filter.clone();
        Box::pin(async move {
            crate::dead_letters::flush(&self.inner).await;
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
            crate::dead_letters::flush(&self.inner).await;
            crate::group::delivery_state(&self.inner, &topic, seq, &group).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            PgStore::close(self).await;
            Ok(())
        })
    }

    fn features(&self) -> Features {
        FEATURES
    }
}

impl herald::queue::QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) {
        crate::dead_letters::enqueue(self, letter);
    }
}

//! `impl Transport for PgStore`, and the store as its queues' host.

use herald::delivery::BoxFuture;
use herald::{
    DeadLetter, DeadLetterFilter, DeliveryState, Envelope, Error, ErrorCode, Features, Result,
    SubscribeSpec, Subscription, Topic, Transport,
};

use crate::store::{Inner, PgStore};

/// What the PostgreSQL store claims so far: history and priority. Durable
/// consumer groups come next; until then it does not claim `durable`, and
/// the conformance suite skips the durable scenarios.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.retains_history = true;
    f.priority = true;
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
        _topic: &Topic,
        _seq: u64,
        group: &str,
    ) -> BoxFuture<'_, Result<DeliveryState>> {
        // No consumer group can exist on this store yet (see FEATURES).
        let err = Error::new(ErrorCode::NotFound, format!("no consumer group {group:?}"));
        Box::pin(std::future::ready(Err(err)))
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

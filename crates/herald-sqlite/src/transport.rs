//! [`herald::Transport`] for the SQLite store.

use herald::delivery::BoxFuture;
use herald::{
    DeadLetter, DeadLetterFilter, Envelope, Features, GroupInfo, Result, StartPosition,
    SubscribeSpec, Subscription, Topic, TopicInfo, Transport,
};

use crate::store::SqliteStore;

/// What the SQLite store gives: durable, with full history, with priority.
pub const FEATURES: Features = {
    let mut f = Features::none();
    f.durable = true;
    f.retains_history = true;
    f.priority = true;
    f.exact_resume = true;
    f
};

impl Transport for SqliteStore {
    fn publish(&self, batch: Vec<Envelope>) -> BoxFuture<'_, Result<Vec<u64>>> {
        Box::pin(self.append(batch))
    }

    fn subscribe(&self, spec: SubscribeSpec) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(crate::tail::subscribe(&self.inner, spec))
    }

    fn last_seq(&self, topic: &Topic) -> BoxFuture<'_, Result<Option<u64>>> {
        let topic = topic.clone();
        Box::pin(async move { SqliteStore::last_seq(self, &topic).await })
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        Box::pin(SqliteStore::topics(self))
    }

    fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Envelope>>> {
        let topic = topic.clone();
        Box::pin(async move { SqliteStore::replay(self, topic.as_str(), from, limit).await })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>>> {
        Box::pin(async move {
            self.flush().await?;
            crate::group::groups(self.inner.readers.clone()).await
        })
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let filter = filter.clone();
        Box::pin(async move {
            self.flush().await?;
            crate::dead_letters::list(self.inner.readers.clone(), filter).await
        })
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> BoxFuture<'_, Result<u64>> {
        let filter = filter.clone();
        Box::pin(async move {
            self.flush().await?;
            crate::dead_letters::purge(self, filter).await
        })
    }

    fn delivery_state(
        &self,
        topic: &Topic,
        seq: u64,
        group: &str,
    ) -> BoxFuture<'_, Result<herald::DeliveryState>> {
        Box::pin(crate::group::delivery_state(
            self.inner.readers.clone(),
            topic.clone(),
            seq,
            group.to_owned(),
        ))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            SqliteStore::close(self).await;
            Ok(())
        })
    }

    fn features(&self) -> Features {
        FEATURES
    }
}

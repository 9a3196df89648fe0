//! Subscriptions without a group: the log tailed into delivery queues.
//!
//! Owns this store's side of [`herald::backend::log_tail`]: the [`Log`] its
//! tails read (sequenced events in `pos` order, woken by the sequencer's
//! NOTIFY, with the fallback poll). The tails themselves, shared by
//! subscriptions that read the same topics, are `log_tail`'s; a
//! [`herald::backend::queue::Queue`] delivers (priority, redelivery, ack
//! deadlines, dead letters). Publishers never wait for subscribers, and
//! nothing is lost: the log holds it. These subscriptions commit nothing
//! (they are ephemeral). Where a tail that does not start at the latest
//! event begins is `log`'s (`start_cursor`); the queue's dead letters are
//! written through `dead_letters`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald::backend::log_tail::{Log, Tails};
use herald::backend::queue::{self, Queue, QueueHost};
use herald::{Result, StartPosition, SubscribeSpec, Subscription};
use tokio::sync::watch;

use crate::conn::{closed, current_pos, runtime_error, Inner};

/// Events read per tail query.
const PAGE: i64 = 500;

/// Open a group-less subscription (`spec` validated, the store open).
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    // A start other than the latest is found by index, so a tail that
    // wants nothing of a large log does not read it all.
    let cursor = match spec.start {
        StartPosition::Latest => current_pos(&inner.pool, &inner.s).await?,
        ref start => {
            let mut conn = inner.pool.acquire().await.map_err(runtime_error)?;
            let position = herald::backend::group::Position::new(start, 0);
            crate::log::start_cursor(&mut conn, &inner.s, &spec, &position).await?
        }
    };
    let host: Weak<dyn QueueHost> = Arc::downgrade(inner) as Weak<Inner>;
    let max_in_flight = spec.max_in_flight;
    let queue = Queue::new(spec, host);
    queue.join();
    if !inner.queues.register(&queue) {
        return Err(closed());
    }
    herald::backend::log_tail::follow(inner, queue.clone(), cursor);
    Ok(queue::member(queue, max_in_flight))
}

impl Log for Inner {
    async fn page(&self, after: i64, topics: Option<&[String]>) -> Result<Vec<(i64, Vec<u8>)>> {
        page(self, after, topics).await
    }

    fn committed(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn idle(&self) -> Duration {
        self.config.poll()
    }

    fn tails(&self) -> &Tails {
        &self.tails
    }
}

async fn page(inner: &Inner, after: i64, topics: Option<&[String]>) -> Result<Vec<(i64, Vec<u8>)>> {
    let s = &inner.s;
    let filter = if topics.is_some() {
        "AND topic = ANY($2)"
    } else {
        "AND $2::text[] IS NOT NULL"
    };
    let sql = format!(
        "SELECT pos, envelope FROM {s}.events WHERE pos > $1 {filter} ORDER BY pos LIMIT $3"
    );
    let rows = sqlx::query_as(&sql)
        .bind(after)
        .bind(topics.unwrap_or_default())
        .bind(PAGE)
        .fetch(&inner.pool);
    herald::backend::log_tail::take_page(rows, herald::backend::log_tail::PAGE_BYTES)
        .await
        .map_err(runtime_error)
}

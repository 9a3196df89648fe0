//! Subscriptions without a group: a task tails the log into a delivery queue.
//!
//! Owns the tail task: it reads committed events in commit order (`pos`),
//! keeps those the subscription wants from its start position on, and feeds
//! them to a [`herald::backend::queue::Queue`], which does the delivering (priority,
//! redelivery, ack deadlines, dead letters). A full queue makes the tail wait;
//! publishers never wait for subscribers, and nothing is lost: the log holds
//! it. These subscriptions commit nothing (they are ephemeral); consumer
//! groups are durable and live in `group`. Does not own the queues' host
//! (`dead_letters`) or the dispatch of a group-less subscription here
//! (`transport`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald::backend::queue::{self, Queue, QueueHost};
use herald::{Result, StartPosition, SubscribeSpec, Subscription};

use crate::conn::{closed, max_pos, on_handle, runtime_error, Inner};
use crate::log::first_wanted;

/// Events read per query.
const PAGE: i64 = 256;
/// How often an idle tail checks that its subscription is still open.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Open a group-less subscription (`spec` validated, the store open).
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    // A start other than the latest is found by index, so a tail that
    // wants nothing of a large log does not read it all: just below the
    // first event it may want, else after the last (read first, so what
    // commits meanwhile is read too).
    let last = max_pos(inner.readers.clone()).await?;
    let cursor = match spec.start {
        StartPosition::Latest => last,
        ref start => {
            let mut conn = inner.readers.acquire().await.map_err(runtime_error)?;
            let position = herald::backend::group::Position::new(start, 0);
            match on_handle(&mut conn, |c| first_wanted(c, &spec, &position)).await? {
                Some(pos) => pos - 1,
                None => last,
            }
        }
    };
    let host: Weak<dyn QueueHost> = Arc::downgrade(inner) as Weak<Inner>;
    let queue = Queue::new(spec, host);
    queue.join();
    if !inner.queues.register(&queue) {
        return Err(closed());
    }
    tokio::spawn(tail(inner.clone(), queue.clone(), cursor));
    Ok(queue::member(queue))
}

async fn tail(inner: Arc<Inner>, queue: Arc<Queue>, cursor: i64) {
    let topics = herald::backend::log_tail::literal_topics(queue.spec());
    let stopped = || inner.closed.load(Ordering::Acquire);
    let page = |after| page(&inner, after, topics.as_deref());
    herald::backend::log_tail::follow(
        queue.clone(),
        cursor,
        inner.committed.clone(),
        IDLE_CHECK,
        stopped,
        page,
    )
    .await;
}

async fn page(inner: &Inner, after: i64, topics: Option<&[String]>) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut q = sqlx::QueryBuilder::new("SELECT pos, envelope FROM events WHERE pos > ");
    q.push_bind(after);
    if let Some(topics) = topics {
        q.push(" AND topic IN (");
        let mut list = q.separated(", ");
        for t in topics {
            list.push_bind(t.as_str());
        }
        q.push(")");
    }
    q.push(" ORDER BY pos LIMIT ");
    q.push_bind(PAGE);
    let rows = q.build_query_as().fetch(&inner.readers);
    herald::backend::log_tail::take_page(rows, herald::backend::log_tail::PAGE_BYTES)
        .await
        .map_err(runtime_error)
}

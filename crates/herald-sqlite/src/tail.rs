//! Subscriptions without a group: the log tailed into delivery queues.
//!
//! Owns where a group-less subscription starts reading and this store's
//! side of [`herald::backend::log_tail`] (the [`Log`] it reads: pages of
//! committed events in commit order, `pos`); the tails themselves, shared
//! by subscriptions that read the same topics, are `log_tail`'s. A
//! [`herald::backend::queue::Queue`] does the delivering (priority,
//! redelivery, ack deadlines, dead letters); publishers never wait for
//! subscribers, and nothing is lost: the log holds it. These subscriptions
//! commit nothing (they are ephemeral); consumer groups are durable and
//! live in `group`. Does not own the queues' host (`dead_letters`) or the
//! dispatch of a group-less subscription here (`transport`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald::backend::log_tail::{Log, Tails};
use herald::backend::queue::{self, Queue, QueueHost};
use herald::{Result, StartPosition, SubscribeSpec, Subscription};
use tokio::sync::watch;

use crate::conn::{closed, max_pos, on_handle, runtime_error, Inner};
use crate::log::first_wanted;

/// Events read per query.
const PAGE: i64 = 256;
/// How often an idle tail reads again without a wake-up.
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
        self.committed.clone()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn idle(&self) -> Duration {
        IDLE_CHECK
    }

    fn tails(&self) -> &Tails {
        &self.tails
    }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use herald::{Bus, Message, Payload, StartPosition, Subscription};

    use crate::{SqliteConfig, SqliteStore};

    async fn open(dir: &tempfile::TempDir) -> (SqliteStore, Bus) {
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("t.db")))
            .await
            .unwrap();
        (store.clone(), Bus::new(store))
    }

    /// Wait until the store's shared readers have these members (sorted).
    async fn members(store: &SqliteStore, want: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut now = store.inner.tails.members();
            now.sort_unstable();
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "members {now:?}, never {want:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn batch(topic: &'static str, range: std::ops::Range<u64>) -> Vec<Message> {
        range
            .map(|n| Message::new(topic, Payload::json(&n).unwrap()))
            .collect()
    }

    /// The next `n` payloads of `sub`, acked.
    async fn take(sub: &mut Subscription, n: usize) -> Vec<u64> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            let d = sub.next().await.unwrap().unwrap();
            got.push(d.envelope().decode::<u64>().unwrap());
            d.ack().await.unwrap();
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_tails_of_the_same_topics_share_one_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut a = bus.subscribe_raw("jobs").ephemeral().await.unwrap();
        let mut b = bus.subscribe_raw("jobs").ephemeral().await.unwrap();
        let mut mail = bus.subscribe_raw("mail").ephemeral().await.unwrap();
        members(&store, &[1, 2]).await;
        bus.publish(batch("jobs", 0..5)).await.unwrap();
        bus.publish(batch("mail", 5..7)).await.unwrap();
        assert_eq!(take(&mut a, 5).await, [0, 1, 2, 3, 4]);
        assert_eq!(take(&mut b, 5).await, [0, 1, 2, 3, 4]);
        assert_eq!(take(&mut mail, 2).await, [5, 6]);
        drop((a, b, mail));
        // The readers end with their last member.
        members(&store, &[]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_without_room_reads_alone_loses_nothing_and_joins_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut slow = bus
            .subscribe_raw("jobs")
            .ephemeral()
            .buffer(4)
            .await
            .unwrap();
        let mut fast = bus.subscribe_raw("jobs").ephemeral().await.unwrap();
        members(&store, &[2]).await;
        // One commit, one page of 50: more than the slow queue's room.
        bus.publish(batch("jobs", 0..50)).await.unwrap();
        members(&store, &[1]).await;
        assert_eq!(take(&mut fast, 50).await, (0..50).collect::<Vec<_>>());
        assert_eq!(take(&mut slow, 50).await, (0..50).collect::<Vec<_>>());
        // Caught up, it shares the reader again, and misses nothing.
        members(&store, &[2]).await;
        bus.publish(batch("jobs", 50..53)).await.unwrap();
        assert_eq!(take(&mut slow, 3).await, [50, 51, 52]);
        assert_eq!(take(&mut fast, 3).await, [50, 51, 52]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tail_that_starts_back_reads_alone_until_it_has_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        bus.publish(batch("jobs", 0..10)).await.unwrap();
        let mut live = bus.subscribe_raw("jobs").ephemeral().await.unwrap();
        members(&store, &[1]).await;
        let mut replay = bus
            .subscribe_raw("jobs")
            .ephemeral()
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        assert_eq!(take(&mut replay, 10).await, (0..10).collect::<Vec<_>>());
        members(&store, &[2]).await;
        bus.publish(batch("jobs", 10..12)).await.unwrap();
        assert_eq!(take(&mut replay, 2).await, [10, 11]);
        assert_eq!(take(&mut live, 2).await, [10, 11]);
    }
}

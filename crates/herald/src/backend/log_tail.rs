//! Following a durable log into delivery queues: the group-less
//! subscriptions of the store-backed transports (SQLite, PostgreSQL).
//!
//! Owns [`Log`] (what a store supplies: a page reader, a wake-up carrying
//! the highest committed `pos`, whether it closed) and [`Tails`], the
//! readers of one store. A tail reads the log page by page in its commit
//! order (`pos`), decodes each stored envelope, keeps what a subscription
//! wants from its start on, and offers it to the subscription's [`Queue`],
//! which delivers. An idle tail also re-reads every [`Log::idle`] to cover
//! missed wake-ups. Such subscriptions commit nothing. A page is bounded in
//! rows by the store's query and in bytes by [`take_page`] (at most
//! [`PAGE_BYTES`] past its first row), so large events never make a tail
//! hold hundreds of them.
//!
//! **Shared tails.** Subscriptions that read the same topics (the same
//! literal topics, or any pattern: then the whole log) share one reader,
//! which decodes each event once and offers it to every member: a thousand
//! live WebSocket tails cost one query per commit, not a thousand. A
//! subscription joins the shared reader only where that reader has read no
//! further than the subscription's own cursor, so it misses nothing: a
//! subscription that starts further back (earliest, a `seq`, a time) reads
//! alone until it has caught up, then joins. A member whose queue has no
//! room for a page takes what fits and leaves to read alone from there; a
//! slow subscriber never holds the others up, and nothing is lost — the
//! log holds what it has not taken. A lone reader waits for room, as
//! before, and joins again once it has caught up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::backend::queue::Queue;
use crate::model::envelope::Envelope;
use crate::model::error::Result;

/// The bytes of stored envelopes one page holds, past its first row.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The rows of a page query, read as they come until `max_bytes` of
/// envelopes are in hand (the first row always is): the query's row limit
/// bounds a page of small events, this its memory for large ones.
pub async fn take_page<S, E>(
    rows: S,
    max_bytes: usize,
) -> std::result::Result<Vec<(i64, Vec<u8>)>, E>
where
    S: futures_core::Stream<Item = std::result::Result<(i64, Vec<u8>), E>>,
{
    use futures_util::TryStreamExt;
    let mut rows = std::pin::pin!(rows);
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(row) = rows.try_next().await? {
        bytes += row.1.len();
        out.push(row);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// The topics of `spec` when every pattern is a literal topic (a store can
/// then read only those topics' events), else `None`.
pub fn literal_topics(spec: &crate::SubscribeSpec) -> Option<Vec<String>> {
    spec.patterns
        .iter()
        .map(|p| p.is_literal().then(|| p.as_str().to_owned()))
        .collect()
}

/// What a store supplies to the tails of its log.
pub trait Log: Send + Sync + 'static {
    /// The next stored `(pos, envelope JSON)` rows after `after`, in `pos`
    /// order, of `topics` only when given (else of every topic); bounded
    /// by the store's row limit and [`take_page`].
    fn page(
        &self,
        after: i64,
        topics: Option<&[String]>,
    ) -> impl Future<Output = Result<Vec<(i64, Vec<u8>)>>> + Send;

    /// A wake-up: its value is the highest `pos` known committed.
    fn committed(&self) -> watch::Receiver<i64>;

    /// Whether the store is closed: its tails close their queues and end.
    fn is_closed(&self) -> bool;

    /// How long an idle tail waits for a wake-up before reading again.
    fn idle(&self) -> Duration;

    /// The store's tails.
    fn tails(&self) -> &Tails;
}

/// The tails of one store's log that subscriptions share, by the topics
/// they read (see the module docs).
#[derive(Default)]
pub struct Tails {
    shared: Mutex<HashMap<Topics, Arc<Shared>>>,
}

/// What a tail reads: these literal topics (sorted), or every topic.
type Topics = Option<Vec<String>>;

/// One reader and the queues it feeds.
struct Shared {
    topics: Topics,
    state: Mutex<SharedState>,
}

struct SharedState {
    /// The last `pos` read and offered to every member.
    cursor: i64,
    members: Vec<Member>,
}

struct Member {
    queue: Arc<Queue>,
    /// It wants events after this `pos` only (it joined there).
    floor: i64,
}

impl Tails {
    /// The members of each shared reader, for inspection and tests.
    pub fn members(&self) -> Vec<usize> {
        self.shared
            .lock()
            .values()
            .map(|tail| tail.state.lock().members.len())
            .collect()
    }
}

/// The topics a tail of `spec` reads.
fn topics_of(spec: &crate::SubscribeSpec) -> Topics {
    literal_topics(spec).map(|mut topics| {
        topics.sort_unstable();
        topics.dedup();
        topics
    })
}

/// Feed `queue` from the log after `cursor` until the queue closes or the
/// store does: through the shared reader of its topics where it can join
/// one (or start one), else alone until it can.
pub fn follow<L: Log>(log: &Arc<L>, queue: Arc<Queue>, cursor: i64) {
    if !join(log, &queue, cursor) {
        tokio::spawn(alone(log.clone(), queue, cursor));
    }
}

/// Make `queue` a member of the shared reader of its topics, starting one
/// when there is none; false, and nothing changed, when that reader has
/// read past `cursor` (the queue would miss what lies between).
fn join<L: Log>(log: &Arc<L>, queue: &Arc<Queue>, cursor: i64) -> bool {
    let topics = topics_of(queue.spec());
    let member = Member {
        queue: queue.clone(),
        floor: cursor,
    };
    let mut shared = log.tails().shared.lock();
    if let Some(tail) = shared.get(&topics) {
        let mut state = tail.state.lock();
        if state.cursor > cursor {
            return false;
        }
        state.members.push(member);
        return true;
    }
    let tail = Arc::new(Shared {
        topics: topics.clone(),
        state: Mutex::new(SharedState {
            cursor,
            members: vec![member],
        }),
    });
    shared.insert(topics, tail.clone());
    tokio::spawn(read_shared(log.clone(), tail));
    true
}

/// The shared reader's loop: one page at a time, offered to every member;
/// it ends (and leaves the registry) when its last member has gone.
async fn read_shared<L: Log>(log: Arc<L>, tail: Arc<Shared>) {
    let mut committed = log.committed();
    let mut cursor = tail.state.lock().cursor;
    loop {
        if !tail.keep_going(&*log) {
            return;
        }
        committed.borrow_and_update();
        let rows = match log.page(cursor, tail.topics.as_deref()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "a shared tail could not read the log; retrying");
                tokio::time::sleep(log.idle()).await;
                continue;
            }
        };
        let Some(&(last, _)) = rows.last() else {
            wait(&mut committed, log.idle()).await;
            continue;
        };
        let events = decode(rows);
        let leaving: Vec<(Arc<Queue>, i64)> = {
            let mut state = tail.state.lock();
            let mut leaving = Vec::new();
            state
                .members
                .retain(|member| match member.offer(&events, cursor) {
                    Offered::All => true,
                    Offered::Closed => false,
                    Offered::Until(pos) => {
                        leaving.push((member.queue.clone(), pos));
                        false
                    }
                });
            state.cursor = last;
            leaving
        };
        cursor = last;
        for (queue, pos) in leaving {
            tokio::spawn(alone(log.clone(), queue, pos));
        }
    }
}

impl Shared {
    /// Drop members whose queue closed (closing them all when the store
    /// has); false, with the reader out of the registry, once none is left.
    fn keep_going<L: Log>(self: &Arc<Self>, log: &L) -> bool {
        let mut shared = log.tails().shared.lock();
        let mut state = self.state.lock();
        if log.is_closed() {
            for member in state.members.drain(..) {
                member.queue.close();
            }
        }
        state.members.retain(|m| !m.queue.is_closed());
        if !state.members.is_empty() {
            return true;
        }
        if shared
            .get(&self.topics)
            .is_some_and(|tail| Arc::ptr_eq(tail, self))
        {
            shared.remove(&self.topics);
        }
        false
    }
}

/// What a member took of a page.
enum Offered {
    /// All it wants of it.
    All,
    /// Nothing: its queue is closed.
    Closed,
    /// What fitted, up to and including this `pos`; it reads on alone
    /// from there.
    Until(i64),
}

impl Member {
    /// Offer the events of a page read after `cursor` that this member
    /// wants, as many as its queue has room for now.
    fn offer(&self, events: &[(i64, Arc<Envelope>)], cursor: i64) -> Offered {
        let spec = self.queue.spec();
        let wanted: Vec<&(i64, Arc<Envelope>)> = events
            .iter()
            .filter(|(pos, env)| {
                *pos > self.floor
                    && spec.wants(env.topic().as_str(), env.kind())
                    && spec.start.admits(env)
            })
            .collect();
        let fits = wanted.len().min(self.queue.room());
        let until = match fits.checked_sub(1) {
            Some(i) => wanted[i].0,
            None => self.floor.max(cursor),
        };
        let taken = wanted[..fits].iter().map(|(_, env)| env.clone()).collect();
        if self.queue.offer(taken).is_err() {
            return Offered::Closed;
        }
        if fits < wanted.len() {
            Offered::Until(until)
        } else {
            Offered::All
        }
    }
}

/// Feed `queue` alone from the log after `cursor`, waiting for room in it,
/// until it closes, the store does, or it joins a shared reader: it tries
/// when it has read all there is, and after a page its queue had room for
/// (a subscriber that keeps up), and succeeds once that reader has read no
/// further than this one.
async fn alone<L: Log>(log: Arc<L>, queue: Arc<Queue>, mut cursor: i64) {
    let topics = topics_of(queue.spec());
    let spec = queue.spec().clone();
    let mut committed = log.committed();
    loop {
        if queue.is_closed() {
            return;
        }
        if log.is_closed() {
            queue.close();
            return;
        }
        committed.borrow_and_update();
        let rows = match log.page(cursor, topics.as_deref()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "a subscription could not read the log; retrying");
                tokio::time::sleep(log.idle()).await;
                continue;
            }
        };
        let Some(&(last, _)) = rows.last() else {
            if join(&log, &queue, cursor) {
                return;
            }
            wait(&mut committed, log.idle()).await;
            continue;
        };
        let wanted: Vec<Arc<Envelope>> = decode(rows)
            .into_iter()
            .filter(|(_, env)| {
                spec.wants(env.topic().as_str(), env.kind()) && spec.start.admits(env)
            })
            .map(|(_, env)| env)
            .collect();
        let kept_up = queue.room() >= wanted.len();
        if !queue.push(wanted).await {
            return;
        }
        cursor = last;
        if kept_up && join(&log, &queue, cursor) {
            return;
        }
    }
}

/// Wait for a commit, at most `idle`.
async fn wait(committed: &mut watch::Receiver<i64>, idle: Duration) {
    if let Ok(Err(_)) = tokio::time::timeout(idle, committed.changed()).await {
        // The signal's sender is gone (the store is closing).
        tokio::time::sleep(idle).await;
    }
}

/// The envelopes of stored rows, each with its `pos`; an undecodable one
/// is logged and skipped.
fn decode(rows: Vec<(i64, Vec<u8>)>) -> Vec<(i64, Arc<Envelope>)> {
    rows.into_iter()
        .filter_map(|(pos, bytes)| match Envelope::from_stored(&bytes) {
            Ok(env) => Some((pos, Arc::new(env))),
            Err(e) => {
                tracing::error!(pos, error = %e, "skipping an undecodable stored event");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_stops_at_its_byte_bound_but_always_has_a_row() {
        let rows = |sizes: &[usize]| {
            let items: Vec<std::result::Result<(i64, Vec<u8>), ()>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Ok((i as i64 + 1, vec![0u8; *n])))
                .collect();
            futures_util::stream::iter(items)
        };
        let page = take_page(rows(&[10, 10, 10, 10]), 25).await.unwrap();
        assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        let page = take_page(rows(&[100, 10]), 25).await.unwrap();
        assert_eq!(page.len(), 1, "a row larger than the bound comes alone");
        let page = take_page(rows(&[1, 1]), 25).await.unwrap();
        assert_eq!(page.len(), 2);
        let failing = futures_util::stream::iter(vec![Ok((1, vec![])), Err("boom")]);
        assert_eq!(take_page(failing, 25).await.unwrap_err(), "boom");
    }
}

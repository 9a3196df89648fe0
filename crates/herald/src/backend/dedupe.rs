//! Where a handler's [`Dedupe`](crate::dedupe::Dedupe) layer remembers the
//! message ids a group has processed: the [`DedupeStore`] each store
//! implements ([`Transport::processed_ids`](crate::backend::transport::Transport::processed_ids)),
//! and [`MemoryDedupe`], the in-process one with a time window (the memory
//! store's). Time is tokio's.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::in_range;
use crate::model::delivery::BoxFuture;
use crate::model::error::Result;

/// How long [`MemoryDedupe`] remembers a processed id by default.
pub const DEFAULT_WINDOW: Duration = crate::config::DEFAULT_DEDUPE_WINDOW;

/// A processed-ids window checked (1 ms – 7 days, as
/// `HERALD_DEDUPE_WINDOW`) and in milliseconds, as every store keeps it.
///
/// ```
/// use std::time::Duration;
/// use herald::backend::dedupe::window_ms;
/// assert_eq!(window_ms(Duration::from_secs(2)).unwrap(), 2000);
/// assert!(window_ms(Duration::ZERO).is_err());
/// ```
pub fn window_ms(window: Duration) -> Result<i64> {
    in_range(
        "HERALD_DEDUPE_WINDOW",
        window.as_secs_f64(),
        0.001,
        7.0 * 86_400.0,
    )?;
    Ok(window.as_millis().min(i64::MAX as u128) as i64)
}

/// Where processed message ids are remembered, per consumer group.
pub trait DedupeStore: Send + Sync + 'static {
    /// Whether `group` already processed message `id` (within the window).
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>>;
    /// Remember that `group` processed message `id`.
    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>>;
}

/// Processed ids in memory, forgotten after a window (default
/// [`DEFAULT_WINDOW`]). Lost on restart: pair it with a transport whose
/// redeliveries come within the process's life, or use a durable store.
pub struct MemoryDedupe {
    window: Duration,
    groups: Mutex<HashMap<Box<str>, Window, foldhash::fast::RandomState>>,
}

#[derive(Default)]
struct Window {
    ids: HashMap<Uuid, Instant, foldhash::fast::RandomState>,
    order: VecDeque<(Instant, Uuid)>,
}

impl Default for MemoryDedupe {
    fn default() -> Self {
        MemoryDedupe {
            window: DEFAULT_WINDOW,
            groups: Mutex::default(),
        }
    }
}

impl MemoryDedupe {
    /// Remember ids for `window` (1 ms–7 days).
    pub fn with_window(window: Duration) -> Result<Self> {
        window_ms(window)?;
        Ok(MemoryDedupe {
            window,
            groups: Mutex::default(),
        })
    }

    fn expire(w: &mut Window, now: Instant) {
        while let Some((until, id)) = w.order.front().copied() {
            if until > now {
                break;
            }
            w.order.pop_front();
            if w.ids.get(&id) == Some(&until) {
                w.ids.remove(&id);
            }
        }
    }
}

impl DedupeStore for MemoryDedupe {
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        let groups = self.groups.lock();
        let until = groups.get(group).and_then(|w| w.ids.get(&id).copied());
        drop(groups);
        // The clock is read only for a hit; expired ids are dropped by `record`.
        let seen = until.is_some_and(|until| until > Instant::now());
        Box::pin(std::future::ready(Ok(seen)))
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        let now = Instant::now();
        let until = now + self.window;
        let mut groups = self.groups.lock();
        let w = match groups.get_mut(group) {
            Some(w) => w,
            None => groups.entry(group.into()).or_default(),
        };
        MemoryDedupe::expire(w, now);
        w.ids.insert(id, until);
        w.order.push_back((until, id));
        Box::pin(std::future::ready(Ok(())))
    }
}

impl std::fmt::Debug for MemoryDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDedupe")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_per_group_within_the_window() {
        let store = MemoryDedupe::with_window(Duration::from_secs(10)).unwrap();
        let id = Uuid::now_v7();
        assert!(!store.seen("a", id).await.unwrap());
        store.record("a", id).await.unwrap();
        assert!(store.seen("a", id).await.unwrap());
        assert!(!store.seen("b", id).await.unwrap(), "groups are separate");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !store.seen("a", id).await.unwrap(),
            "forgotten after the window"
        );
    }
}

//! Consumer-side dedupe: a redelivered message whose effects already ran is
//! acked without running again.
//!
//! Owns the [`Dedupe`] layer, the [`DedupeStore`] seam for processed-id
//! stores, and [`MemoryDedupe`], the in-process store with a time window.
//! Ids are recorded per consumer group once a message's effects are durable
//! ([`Layer::handled`]), not when the handler returns, so a message whose
//! effects failed to publish runs again. Durable stores belong to their
//! transports' crates. Time is tokio's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

pub use crate::backend::dedupe::DedupeStore;
use crate::config::in_range;
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::Result;
use crate::runtime::middleware::{Effects, Layer, Next};

/// How long [`MemoryDedupe`] remembers a processed id by default.
pub const DEFAULT_WINDOW: Duration = crate::config::DEFAULT_DEDUPE_WINDOW;

/// Skips messages the group already processed, by envelope id.
///
/// ```
/// use herald::dedupe::{Dedupe, MemoryDedupe};
/// let handler = herald::Bus::memory()
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(MemoryDedupe::default()));
/// # drop(handler);
/// ```
#[derive(Clone)]
pub struct Dedupe {
    store: Arc<dyn DedupeStore>,
}

impl Dedupe {
    /// Dedupe against `store`.
    pub fn new(store: impl DedupeStore) -> Self {
        Dedupe {
            store: Arc::new(store),
        }
    }
}

impl Layer for Dedupe {
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            if self.store.seen(next.group(), envelope.id()).await? {
                return Ok(Effects::new());
            }
            next.run(envelope).await
        })
    }

    fn handled<'a>(
        &'a self,
        group: &'a str,
        envelope: &'a Envelope,
    ) -> Option<BoxFuture<'a, Result<()>>> {
        Some(self.store.record(group, envelope.id()))
    }
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").finish_non_exhaustive()
    }
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
        in_range(
            "HERALD_DEDUPE_WINDOW",
            window.as_secs_f64(),
            0.001,
            7.0 * 86_400.0,
        )?;
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

//! Rate limits: at most N calls per period, globally or per key.
//!
//! Owns [`RateLimit`]. A call over the limit waits for its turn; nothing is
//! dropped. The limit holds over any sliding window: each scope (the whole
//! handler, or one `key`) keeps the start times of its last N calls, and a
//! new call starts no earlier than the oldest of them plus the period.
//! Starts less than 1/1024 of the period apart share one entry stamped with
//! the latest of them, so a scope keeps at most about a thousand entries
//! however high N is; that rounding only ever delays (by at most period/1024),
//! never admits more than N. Callers reserve their start time under a lock
//! and then sleep, so waiting callers are served in arrival order. Time is
//! tokio's, so tests can use paused time.
//!
//! Written here rather than taken from `governor`: governor's waiting runs
//! on its own clock and timer (not tokio's, so paused-time tests cannot
//! drive it) and its GCRA allows up to 2N−1 calls in one period, where users
//! asking for "N per period" expect N.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::in_range;
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::Result;
use crate::runtime::middleware::{Effects, Layer, Next};

/// At most `limit` calls per `period`, for the whole handler or per key;
/// waiting, never dropping.
///
/// ```
/// use std::time::Duration;
/// use herald::rate_limit::RateLimit;
/// # fn main() -> herald::Result<()> {
/// // Each customer's events at most 10 a second; all together 1,000 a second.
/// let handler = herald::Bus::memory()
///     .handler("customers.>")
///     .group("crm-sync")
///     .layer(RateLimit::global(1000, Duration::from_secs(1))?)
///     .layer(RateLimit::per_key(10, Duration::from_secs(1))?);
/// # drop(handler);
/// # Ok(()) }
/// ```
///
/// Events without a key share one per-key bucket.
#[derive(Clone)]
pub struct RateLimit {
    shared: Arc<Shared>,
}

struct Shared {
    limit: usize,
    period: Duration,
    /// Starts closer than this share an entry.
    resolution: Duration,
    per_key: bool,
    scopes: Mutex<Scopes>,
}

#[derive(Default)]
struct Scopes {
    starts: HashMap<Box<str>, Starts, foldhash::fast::RandomState>,
    /// Scope count after the last sweep of idle scopes.
    swept_at: usize,
}

/// The last N start times of one scope, oldest first.
#[derive(Default)]
struct Starts {
    entries: VecDeque<Entry>,
    total: usize,
}

/// Starts from `first` to `last` (within the resolution), `count` of them.
struct Entry {
    first: Instant,
    last: Instant,
    count: usize,
}

impl RateLimit {
    /// At most `limit` calls per `period` in all (limit 1–1,000,000;
    /// period 1 ms–1 day).
    pub fn global(limit: u32, period: Duration) -> Result<Self> {
        RateLimit::new(limit, period, false)
    }

    /// At most `limit` calls per `period` for each event `key`.
    pub fn per_key(limit: u32, period: Duration) -> Result<Self> {
        RateLimit::new(limit, period, true)
    }

    fn new(limit: u32, period: Duration, per_key: bool) -> Result<Self> {
        in_range("rate limit", limit, 1, 1_000_000)?;
        in_range("rate limit period", period.as_secs_f64(), 0.001, 86_400.0)?;
        Ok(RateLimit {
            shared: Arc::new(Shared {
                limit: limit as usize,
                period,
                resolution: period / 1024,
                per_key,
                scopes: Mutex::new(Scopes::default()),
            }),
        })
    }

    /// Wait until a call in `key`'s scope may start (the key is ignored
    /// by a global limit).
    pub async fn acquire(&self, key: Option<&str>) {
        let at = self.reserve(key);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Reserve the earliest start allowed in `key`'s scope.
    fn reserve(&self, key: Option<&str>) -> Instant {
        let s = &self.shared;
        let scope = if s.per_key { key.unwrap_or("") } else { "" };
        let mut scopes = s.scopes.lock();
        // Read under the lock, so no caller is stamped earlier than one
        // that reserved before it.
        let now = Instant::now();
        if scopes.starts.len() > 2 * scopes.swept_at.max(512) {
            if let Some(horizon) = now.checked_sub(s.period) {
                scopes
                    .starts
                    .retain(|_, s| s.entries.back().is_some_and(|e| e.last > horizon));
                scopes.swept_at = scopes.starts.len();
            }
        }
        let starts = match scopes.starts.get_mut(scope) {
            Some(starts) => starts,
            None => scopes.starts.entry(scope.into()).or_default(),
        };
        // Starts a period old no longer count: forget them, so a scope far
        // below its limit keeps only the last period's entries.
        while let Some(e) = starts.entries.front() {
            if e.last + s.period > now {
                break;
            }
            starts.total -= e.count;
            starts.entries.pop_front();
        }
        let at = if starts.total < s.limit {
            now
        } else {
            let oldest = starts
                .entries
                .front_mut()
                .expect("a full window has entries");
            let at = (oldest.last + s.period).max(now);
            oldest.count -= 1;
            if oldest.count == 0 {
                starts.entries.pop_front();
            }
            starts.total -= 1;
            at
        };
        match starts.entries.back_mut() {
            Some(e) if at - e.first < s.resolution => {
                e.last = e.last.max(at);
                e.count += 1;
            }
            _ => starts.entries.push_back(Entry {
                first: at,
                last: at,
                count: 1,
            }),
        }
        starts.total += 1;
        at
    }
}

impl Layer for RateLimit {
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            self.acquire(envelope.key()).await;
            next.run(envelope).await
        })
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("limit", &self.shared.limit)
            .field("period", &self.shared.period)
            .field("per_key", &self.shared.per_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window() {
        let limit = RateLimit::global(3, Duration::from_secs(1)).unwrap();
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..10 {
            limit.acquire(None).await;
            starts.push(Instant::now() - t0);
        }
        for w in starts.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_secs(1), "{starts:?}");
        }
        assert_eq!(starts[2], Duration::ZERO, "a burst of 3 goes at once");
        assert_eq!(starts[9], Duration::from_secs(3), "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_do_not_wait_for_each_other() {
        let limit = RateLimit::per_key(1, Duration::from_secs(60)).unwrap();
        let t0 = Instant::now();
        for key in ["a", "b", "c"] {
            limit.acquire(Some(key)).await;
        }
        assert_eq!(Instant::now(), t0);
        limit.acquire(Some("a")).await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_limit_keeps_few_entries_and_still_holds() {
        let limit = RateLimit::global(100_000, Duration::from_secs(1)).unwrap();
        let t0 = Instant::now();
        for i in 0..250_000u32 {
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_micros(300)).await;
            }
            limit.acquire(None).await;
        }
        let scopes = limit.shared.scopes.lock();
        let entries = scopes.starts[""].entries.len();
        assert!(entries <= 1100, "{entries} entries");
        // 250,000 calls at 100,000 per second take at least 2 s.
        assert!(Instant::now() - t0 >= Duration::from_secs(2));
    }

    #[test]
    fn out_of_range_limits_are_refused() {
        assert!(RateLimit::global(0, Duration::from_secs(1)).is_err());
        assert!(RateLimit::per_key(5, Duration::ZERO).is_err());
    }
}

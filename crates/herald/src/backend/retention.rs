//! Retention of a stored log: how long each topic keeps its events.
//!
//! Owns [`Retention`] (bounds by age and count), [`RetentionPolicy`] (a
//! default, per-topic overrides, how often the pass runs, and their
//! `HERALD_RETENTION_*` keys and ranges), how far a topic is cut
//! ([`RetentionPolicy::cut`]) and the background loop that runs a store's
//! pass ([`run_every`]). The deleting is the store's.

use std::future::Future;
use std::time::Duration;

use crate::config::{env_parse, in_range, seconds};
use crate::model::error::Result;
use crate::model::topic::Pattern;

/// How long a topic keeps its events: by age, by count, or both (whichever
/// deletes more). The default keeps everything.
///
/// A subscriber or group whose position fell behind retention continues
/// with the oldest event still kept: the deleted ones are skipped, never an
/// error. Replays and new subscriptions starting before the oldest kept
/// event start at it.
///
/// ```
/// use std::time::Duration;
/// use herald::retention::Retention;
/// let week_or_million = Retention::default()
///     .max_age(Duration::from_secs(7 * 86400))
///     .max_events(1_000_000);
/// assert_eq!(week_or_million.events(), Some(1_000_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    max_age: Option<Duration>,
    max_events: Option<u64>,
}

impl Retention {
    /// Keep everything.
    pub const FOREVER: Retention = Retention {
        max_age: None,
        max_events: None,
    };
    /// Delete events created more than `age` ago.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }
    /// Keep at most the newest `n` events of each topic.
    pub fn max_events(mut self, n: u64) -> Self {
        self.max_events = Some(n);
        self
    }
    /// The age bound.
    pub fn age(&self) -> Option<Duration> {
        self.max_age
    }
    /// The count bound.
    pub fn events(&self) -> Option<u64> {
        self.max_events
    }
    fn keeps_all(&self) -> bool {
        self.max_age.is_none() && self.max_events.is_none()
    }
}

/// How often retention runs when one is configured.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// A store's retention: a default for every topic, overrides by topic
/// pattern (the first match wins), and how often the pass runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    default: Retention,
    by_topic: Vec<(Pattern, Retention)>,
    interval: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            default: Retention::FOREVER,
            by_topic: Vec::new(),
            interval: DEFAULT_RETENTION_INTERVAL,
        }
    }
}

impl RetentionPolicy {
    /// The retention of every topic without its own.
    pub fn set_default(&mut self, r: Retention) {
        self.default = r;
    }
    /// The retention of topics matching `pattern`.
    pub fn set_topic(&mut self, pattern: &str, r: Retention) -> Result<()> {
        self.by_topic.push((Pattern::new(pattern)?, r));
        Ok(())
    }
    /// How often the pass runs.
    pub fn set_interval(&mut self, every: Duration) {
        self.interval = every;
    }
    /// Apply `HERALD_RETENTION_MAX_AGE` (seconds) and
    /// `HERALD_RETENTION_MAX_EVENTS` to the default.
    pub fn read_env(&mut self) -> Result<()> {
        if let Some(v) = env_parse::<f64>("HERALD_RETENTION_MAX_AGE")? {
            self.default = self
                .default
                .max_age(seconds("HERALD_RETENTION_MAX_AGE", v)?);
        }
        if let Some(v) = env_parse("HERALD_RETENTION_MAX_EVENTS")? {
            self.default = self.default.max_events(v);
        }
        Ok(())
    }
    /// Check the bounds (ages 1 s–100 years, counts ≥ 1, interval
    /// 10 ms–1 day).
    pub fn validate(&self) -> Result<()> {
        for r in std::iter::once(&self.default).chain(self.by_topic.iter().map(|(_, r)| r)) {
            if let Some(age) = r.max_age {
                in_range(
                    "HERALD_RETENTION_MAX_AGE",
                    age.as_secs_f64(),
                    1.0,
                    100.0 * 365.0 * 86400.0,
                )?;
            }
            if let Some(n) = r.max_events {
                in_range("HERALD_RETENTION_MAX_EVENTS", n, 1, i64::MAX as u64)?;
            }
        }
        in_range(
            "retention_interval",
            self.interval.as_secs_f64(),
            0.01,
            86400.0,
        )
    }
    /// The retention of `topic`.
    pub fn of(&self, topic: &str) -> Retention {
        self.by_topic
            .iter()
            .find(|(p, _)| p.matches_str(topic))
            .map_or(self.default, |(_, r)| *r)
    }
    /// Whether every topic keeps everything (no pass needed).
    pub fn keeps_everything(&self) -> bool {
        self.default.keeps_all() && self.by_topic.iter().all(|(_, r)| r.keeps_all())
    }
    /// How often the pass runs.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The highest `seq` of `topic` (whose last is `last_seq`) that
    /// retention deletes, 0 for none. `newest_before(ms)` answers the
    /// highest `seq` created before `ms` (0 for none); it is asked only
    /// when the topic has an age bound.
    pub async fn cut<F, Fut>(
        &self,
        topic: &str,
        last_seq: i64,
        now_ms: i64,
        newest_before: F,
    ) -> Result<i64>
    where
        F: FnOnce(i64) -> Fut,
        Fut: Future<Output = Result<i64>>,
    {
        let r = self.of(topic);
        let by_count = r
            .events()
            .map_or(0, |n| (last_seq - n.min(i64::MAX as u64) as i64).max(0));
        let by_age = match r.age() {
            None => 0,
            Some(age) => {
                let age_ms = age.as_millis().min(i64::MAX as u128) as i64;
                newest_before(now_ms.saturating_sub(age_ms)).await?
            }
        };
        Ok(by_count.max(by_age))
    }
}

/// Run `pass` every `policy.interval()` until it returns `None` (the store
/// is gone or closed); nothing when the policy keeps everything. Failures
/// are logged and retried at the next interval.
pub async fn run_every<P, F>(policy: &RetentionPolicy, mut pass: P)
where
    P: FnMut() -> Option<F>,
    F: Future<Output = Result<u64>>,
{
    if policy.keeps_everything() {
        return;
    }
    let mut ticker = tokio::time::interval(policy.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(done) = pass() else { return };
        match done.await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention deleted old events"),
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying at the next interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stricter_bound_wins_and_the_first_pattern_matches() {
        let mut policy = RetentionPolicy::default();
        policy.set_default(Retention::default().max_events(10));
        policy
            .set_topic(
                "audit.>",
                Retention::default().max_age(Duration::from_secs(60)),
            )
            .unwrap();
        let newest_before = |ms: i64| async move { Ok(if ms == 40_000 { 7 } else { 0 }) };
        assert_eq!(
            policy
                .cut("orders.a", 25, 100_000, newest_before)
                .await
                .unwrap(),
            15
        );
        assert_eq!(
            policy
                .cut("orders.a", 5, 100_000, newest_before)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            policy
                .cut("audit.x", 25, 100_000, newest_before)
                .await
                .unwrap(),
            7
        );
        assert!(!policy.keeps_everything());
        assert!(RetentionPolicy::default().keeps_everything());
    }
}

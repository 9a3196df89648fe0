//! Settings of the SQLite store.
//!
//! Owns [`SqliteConfig`] and its `HERALD_*` keys ([`KEYS`]) and ranges; the
//! delivery settings every store shares come in one
//! [`DeliveryConfig`], read once. Opening the store is `store`'s business.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::backend::retention::{Retention, RetentionPolicy};
use herald::config::{env, in_range, invalid, DeliveryConfig, KeySpec};
pub use herald::config::{DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_POLL_INTERVAL};
use herald::Result;

/// Default store file (`HERALD_STORE=sqlite://herald.db`).
pub const DEFAULT_PATH: &str = "herald.db";
/// How long a writer waits for another process's write lock.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events one group commit appends.
pub const DEFAULT_GROUP_COMMIT_MAX: usize = 2000;

/// The keys only the SQLite store reads (the shared ones are
/// [`herald::config::KEYS`]).
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    KeySpec { key: "HERALD_SQLITE_SYNCHRONOUS", default: "full", allowed: "full, normal", doc: "when a commit counts as durable; normal may lose the last commits on power loss" },
];

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=FULL`: the WAL is fsynced at every commit; a publish that
    /// returned `Ok` survives power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a crash of the process but the
    /// last ones may be lost on power loss or an OS crash. Faster.
    Normal,
}

/// Settings of [`SqliteStore`](crate::SqliteStore).
///
/// ```
/// use std::time::Duration;
/// use herald_sqlite::{SqliteConfig, Synchronous};
/// let config = SqliteConfig::new("/var/lib/app/events.db")
///     .synchronous(Synchronous::Full)
///     .dedupe_window(Duration::from_secs(600));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    path: PathBuf,
    synchronous: Synchronous,
    delivery: DeliveryConfig,
    busy_timeout: Duration,
    group_commit_max: usize,
    retention: RetentionPolicy,
}

impl SqliteConfig {
    /// A store at `path` (created when missing; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            delivery: DeliveryConfig::default(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            group_commit_max: DEFAULT_GROUP_COMMIT_MAX,
            retention: RetentionPolicy::default(),
        }
    }

    /// From `HERALD_STORE` (`sqlite://PATH`, default `sqlite://herald.db`),
    /// `HERALD_SQLITE_SYNCHRONOUS` (`full` or `normal`), the retention keys
    /// and the delivery settings ([`DeliveryConfig::from_env`]), validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        let store = env("HERALD_STORE").unwrap_or_else(|| format!("sqlite://{DEFAULT_PATH}"));
        let Some(path) = store.strip_prefix("sqlite://") else {
            return Err(invalid(
                "HERALD_STORE",
                &store,
                "`sqlite://PATH` for the SQLite store",
            ));
        };
        let mut c = SqliteConfig::new(path).delivery(delivery);
        if let Some(v) = env("HERALD_SQLITE_SYNCHRONOUS") {
            c.synchronous = match v.as_str() {
                "full" => Synchronous::Full,
                "normal" => Synchronous::Normal,
                _ => return Err(KEYS[0].invalid(&v)),
            };
        }
        c.retention.read_env()?;
        c.validate()?;
        Ok(c)
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(invalid(
                "HERALD_STORE",
                "sqlite://",
                "a file path after `sqlite://`",
            ));
        }
        self.delivery.validate()?;
        self.delivery
            .check_sql_store("the SQLite store", self.retention.keeps_everything())?;
        in_range("busy_timeout", self.busy_timeout.as_secs_f64(), 0.0, 600.0)?;
        in_range("group_commit_max", self.group_commit_max, 1, 100_000)?;
        self.retention.validate()?;
        Ok(())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// When a commit counts as durable (default [`Synchronous::Full`]).
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }
    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }
    /// Idempotency keys are remembered this long, 0 (off) to 7 days.
    pub fn dedupe_window(mut self, d: Duration) -> Self {
        self.delivery = self.delivery.dedupe_window(d);
        self
    }
    /// How long to wait for another process holding the write lock, 0–600 s.
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }
    /// Most events appended by one group commit, 1–100,000.
    pub fn group_commit_max(mut self, n: usize) -> Self {
        self.group_commit_max = n;
        self
    }

    /// How often to look for commits by other processes, 10 ms–10 s.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.delivery = self.delivery.poll_interval(d);
        self
    }
    /// Retention of every topic without its own (default: keep everything;
    /// `HERALD_RETENTION_MAX_AGE` seconds, `HERALD_RETENTION_MAX_EVENTS`).
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention.set_default(r);
        self
    }
    /// Retention of the topics matching `pattern` (the first matching
    /// pattern wins over the default).
    pub fn retention_for(mut self, pattern: &str, r: Retention) -> Result<Self> {
        self.retention.set_topic(pattern, r)?;
        Ok(self)
    }
    /// How often retention runs, 10 ms–1 day (default 60 s).
    pub fn retention_interval(mut self, d: Duration) -> Self {
        self.retention.set_interval(d);
        self
    }

    /// All retention settings at once (replacing the ones set so far).
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }
    /// The retention of `topic`.
    pub fn retention_of(&self, topic: &str) -> Retention {
        self.retention.of(topic)
    }
    pub(crate) fn retention_policy(&self) -> &RetentionPolicy {
        &self.retention
    }
    pub(crate) fn poll(&self) -> Duration {
        self.delivery.poll_interval_duration()
    }
    pub(crate) fn dedupes_forever(&self) -> bool {
        self.delivery.dedupes_forever()
    }
    pub(crate) fn dead_letters(&self) -> &herald::config::DeadLetters {
        self.delivery.dead_letter_destination()
    }
    pub(crate) fn deliveries(&self) -> u32 {
        self.delivery.max_deliver_attempts()
    }
    pub(crate) fn sync_mode(&self) -> Synchronous {
        self.synchronous
    }
    /// The dedupe window in milliseconds, as the SQL compares it.
    pub(crate) fn dedupe_ms(&self) -> i64 {
        self.delivery.dedupe_window_ms()
    }
    pub(crate) fn busy(&self) -> Duration {
        self.busy_timeout
    }
    pub(crate) fn group_max(&self) -> usize {
        self.group_commit_max
    }
    pub(crate) fn settle_batch(&self) -> usize {
        self.delivery.settle_batch_size()
    }
    pub(crate) fn settle_window(&self) -> Duration {
        self.delivery.settle_window_duration()
    }
}

#[cfg(test)]
mod tests {
    use herald::config::{DeadLetters, DeliveryConfig};

    use super::*;

    #[test]
    fn dead_letters_take_off_but_not_a_name_the_table_would_ignore() {
        let with = |to: DeadLetters| {
            SqliteConfig::new("events.db")
                .delivery(DeliveryConfig::default().dead_letters(to))
                .validate()
        };
        with(DeadLetters::Off).unwrap();
        with(DeadLetters::StoreDefault).unwrap();
        let err = with(DeadLetters::Named("orders.dlq".into())).unwrap_err();
        assert_eq!(err.code(), herald::ErrorCode::Validation);
        assert!(
            err.to_string().contains("HERALD_DEAD_LETTERS=orders.dlq"),
            "{err}"
        );
    }
}

//! Settings of the SQLite store.
//!
//! Owns [`SqliteConfig`] and its `HERALD_*` keys and ranges; opening the store
//! is `store`'s business.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::config::{env, env_parse, in_range, invalid, seconds};
use herald::{Pattern, Result};

/// Default store file (`HERALD_STORE=sqlite://herald.db`).
pub const DEFAULT_PATH: &str = "herald.db";
/// How long an idempotency key is remembered (`HERALD_DEDUPE_WINDOW`).
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// How long a writer waits for another process's write lock.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events one group commit appends.
pub const DEFAULT_GROUP_COMMIT_MAX: usize = 2000;
/// How often the store looks for commits made by other processes sharing
/// the file (`HERALD_POLL_INTERVAL`); this process's commits wake
/// subscriptions at once.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Delivery attempts before dead-lettering (`HERALD_MAX_DELIVER`).
pub const DEFAULT_MAX_DELIVER: u32 = 5;

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
    dedupe_window: Duration,
    busy_timeout: Duration,
    group_commit_max: usize,
    poll_interval: Duration,
    max_deliver: u32,
    retention: Retention,
    retention_by_topic: Vec<(Pattern, Retention)>,
    retention_interval: Duration,
}

/// How long a topic keeps its events: by age, by count, or both (whichever
/// deletes more). The default keeps everything.
///
/// A subscriber or group whose position fell behind retention continues
/// with the oldest event still kept: the deleted ones are skipped, never an
/// error. Replays and new subscriptions starting before the oldest kept
/// event start at it.
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

impl SqliteConfig {
    /// A store at `path` (created when missing; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            group_commit_max: DEFAULT_GROUP_COMMIT_MAX,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_deliver: DEFAULT_MAX_DELIVER,
            retention: Retention::FOREVER,
            retention_by_topic: Vec::new(),
            retention_interval: DEFAULT_RETENTION_INTERVAL,
        }
    }

    /// From `HERALD_STORE` (`sqlite://PATH`, default `sqlite://herald.db`),
    /// `HERALD_SQLITE_SYNCHRONOUS` (`full` or `normal`),
    /// `HERALD_DEDUPE_WINDOW`, `HERALD_POLL_INTERVAL` and
    /// `HERALD_MAX_DELIVER`, validated.
    pub fn from_env() -> Result<Self> {
        let store = env("HERALD_STORE").unwrap_or_else(|| format!("sqlite://{DEFAULT_PATH}"));
        let Some(path) = store.strip_prefix("sqlite://") else {
            return Err(invalid(
                "HERALD_STORE",
                &store,
                "`sqlite://PATH` for the SQLite store",
            ));
        };
        let mut c = SqliteConfig::new(path);
        if let Some(v) = env("HERALD_SQLITE_SYNCHRONOUS") {
            c.synchronous = match v.as_str() {
                "full" => Synchronous::Full,
                "normal" => Synchronous::Normal,
                _ => {
                    return Err(invalid(
                        "HERALD_SQLITE_SYNCHRONOUS",
                        &v,
                        "`full` or `normal`",
                    ))
                }
            };
        }
        if let Some(v) = env_parse::<f64>("HERALD_DEDUPE_WINDOW")? {
            c.dedupe_window = seconds("HERALD_DEDUPE_WINDOW", v)?;
        }
        if let Some(v) = env_parse::<f64>("HERALD_POLL_INTERVAL")? {
            c.poll_interval = seconds("HERALD_POLL_INTERVAL", v)?;
        }
        if let Some(v) = env_parse("HERALD_MAX_DELIVER")? {
            c.max_deliver = v;
        }
        if let Some(v) = env_parse::<f64>("HERALD_RETENTION_MAX_AGE")? {
            c.retention = c.retention.max_age(seconds("HERALD_RETENTION_MAX_AGE", v)?);
        }
        if let Some(v) = env_parse("HERALD_RETENTION_MAX_EVENTS")? {
            c.retention = c.retention.max_events(v);
        }
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
        in_range(
            "HERALD_DEDUPE_WINDOW",
            self.dedupe_window.as_secs(),
            0,
            7 * 24 * 3600,
        )?;
        in_range("busy_timeout", self.busy_timeout.as_secs_f64(), 0.0, 600.0)?;
        in_range("group_commit_max", self.group_commit_max, 1, 100_000)?;
        in_range(
            "HERALD_POLL_INTERVAL",
            self.poll_interval.as_secs_f64(),
            0.01,
            10.0,
        )?;
        in_range("HERALD_MAX_DELIVER", self.max_deliver, 1, 1000)?;
        for r in
            std::iter::once(&self.retention).chain(self.retention_by_topic.iter().map(|(_, r)| r))
        {
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
            self.retention_interval.as_secs_f64(),
            0.01,
            86400.0,
        )?;
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
    /// Idempotency keys are remembered this long, 0 (off) to 7 days.
    pub fn dedupe_window(mut self, d: Duration) -> Self {
        self.dedupe_window = d;
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
        self.poll_interval = d;
        self
    }
    /// Delivery attempts before dead-lettering, 1–1000.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }

    /// Retention of every topic without its own (default: keep everything;
    /// `HERALD_RETENTION_MAX_AGE` seconds, `HERALD_RETENTION_MAX_EVENTS`).
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention = r;
        self
    }
    /// Retention of the topics matching `pattern` (the first matching
    /// pattern wins over the default).
    pub fn retention_for(mut self, pattern: &str, r: Retention) -> Result<Self> {
        self.retention_by_topic.push((Pattern::new(pattern)?, r));
        Ok(self)
    }
    /// How often retention runs, 10 ms–1 day (default 60 s).
    pub fn retention_interval(mut self, d: Duration) -> Self {
        self.retention_interval = d;
        self
    }

    /// The retention of `topic`.
    pub fn retention_of(&self, topic: &str) -> Retention {
        self.retention_by_topic
            .iter()
            .find(|(p, _)| p.matches_str(topic))
            .map_or(self.retention, |(_, r)| *r)
    }
    pub(crate) fn retains_everything(&self) -> bool {
        self.retention.keeps_all() && self.retention_by_topic.iter().all(|(_, r)| r.keeps_all())
    }
    pub(crate) fn retention_every(&self) -> Duration {
        self.retention_interval
    }
    pub(crate) fn poll(&self) -> Duration {
        self.poll_interval
    }
    pub(crate) fn deliveries(&self) -> u32 {
        self.max_deliver
    }
    pub(crate) fn sync_mode(&self) -> Synchronous {
        self.synchronous
    }
    /// The dedupe window in milliseconds, as the SQL compares it.
    pub(crate) fn dedupe_ms(&self) -> i64 {
        self.dedupe_window.as_millis().min(i64::MAX as u128) as i64
    }
    pub(crate) fn busy(&self) -> Duration {
        self.busy_timeout
    }
    pub(crate) fn group_max(&self) -> usize {
        self.group_commit_max
    }
}

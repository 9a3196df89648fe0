//! The store's configuration: where PostgreSQL is, which schema, timings.
//!
//! Owns [`PgConfig`], its defaults, the `HERALD_*` keys only it reads
//! ([`KEYS`]) and the range checks; the delivery settings every store
//! shares come in one [`DeliveryConfig`], read once. Connecting is
//! `conn`'s business, opening the store `store`'s.

use std::time::Duration;

use herald::backend::retention::{Retention, RetentionPolicy};
use herald::config::{env, in_range, redact, DeliveryConfig, KeySpec};
pub use herald::config::{DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_POLL_INTERVAL};
use herald::{Error, Result};

/// The PostgreSQL schema herald's tables live in, by default.
pub const DEFAULT_SCHEMA: &str = "herald";
/// Connections in the store's pool.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// How long a publish waits for its events to be sequenced
/// (`HERALD_TIMEOUT_SECONDS`).
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = herald::config::DEFAULT_TIMEOUT;

/// The keys only the PostgreSQL store reads (the shared ones are
/// [`herald::config::KEYS`]).
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    SCHEMA,
    KeySpec { key: "HERALD_PG_POOL_SIZE", default: "10", allowed: "4–1000", doc: "connections in the store's pool" },
];

const SCHEMA: KeySpec = KeySpec {
    key: "HERALD_PG_SCHEMA",
    default: DEFAULT_SCHEMA,
    allowed: "[a-z_][a-z0-9_]*, at most 49 bytes, not pg_…",
    doc: "the PostgreSQL schema herald's tables live in",
};

/// Where and how to keep events in PostgreSQL.
///
/// ```
/// use herald_postgres::PgConfig;
/// let config = PgConfig::new("postgres://127.0.0.1:5432/test").schema("orders_events");
/// config.validate().unwrap();
/// assert!(PgConfig::new("mysql://x").validate().is_err());
/// assert!(PgConfig::new("postgres://h/db").schema("Bad-Name").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PgConfig {
    url: String,
    schema: String,
    delivery: DeliveryConfig,
    pool_size: u32,
    retention: RetentionPolicy,
}

impl PgConfig {
    /// A store at `url` (`postgres://user@host:port/database`) with the
    /// defaults; a `schema` parameter (`…/database?schema=orders`) is the
    /// [`schema`](Self::schema), the URL's other parameters are the
    /// driver's.
    pub fn new(url: impl Into<String>) -> Self {
        let (url, schema) = herald::config::take_url_param(&url.into(), "schema");
        PgConfig {
            url,
            schema: schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned()),
            delivery: DeliveryConfig::default(),
            pool_size: DEFAULT_POOL_SIZE,
            retention: RetentionPolicy::default(),
        }
    }

    /// `HERALD_STORE` (a `postgres://` URL), `HERALD_PG_SCHEMA`,
    /// `HERALD_PG_POOL_SIZE`, the retention keys and the delivery settings
    /// ([`DeliveryConfig::from_env`]), validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        let url = env("HERALD_STORE")
            .ok_or_else(|| Error::validation("HERALD_STORE is not set (expected postgres://…)"))?;
        let named = herald::config::take_url_param(&url, "schema").1.is_some();
        let mut c = PgConfig::new(url).delivery(delivery);
        if let Some(s) = SCHEMA.value().filter(|_| !named) {
            c.schema = s;
        }
        if let Some(v) = KEYS[1].parse()? {
            c.pool_size = v;
        }
        c.retention.read_env()?;
        c.validate()?;
        Ok(c)
    }

    /// Keep herald's tables in PostgreSQL schema `name` (lowercase letters,
    /// digits and `_`, starting with a letter or `_`, at most 49 bytes so
    /// its NOTIFY channel names fit, not starting with `pg_`).
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = name.into();
        self
    }

    /// The schema herald's tables live in.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }

    /// Remember idempotency keys this long (0 turns dedupe off; up to 7 days).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.delivery = self.delivery.dedupe_window(window);
        self
    }

    /// The fallback poll (10 ms–10 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.delivery = self.delivery.poll_interval(every);
        self
    }

    /// Connections in the pool (4–1000). Two stay with the notification
    /// listeners in the process that sequences.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long a publish waits for its `seq`s (1–300 s).
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.delivery = self.delivery.timeout(d);
        self
    }

    /// Retention of every topic without its own (default: keep everything).
    /// Deleted events are skipped by readers behind them (see
    /// [`Retention`]).
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

    /// Check every value; errors name the key, the value and the range.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(Error::validation(format!(
                "HERALD_STORE {:?} is not a postgres:// URL",
                redact(&self.url)
            )));
        }
        let s = &self.schema;
        // NOTIFY channels are `herald_outbox_<schema>` and must fit 63 bytes.
        let valid = !s.is_empty()
            && s.len() <= 49
            && !s.starts_with("pg_")
            && s.bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
        if !valid {
            return Err(SCHEMA.invalid(format_args!("{s:?}")));
        }
        self.delivery.validate()?;
        self.delivery
            .check_sql_store("the PostgreSQL store", self.retention.keeps_everything())?;
        KEYS[1].check(self.pool_size, 4, 1000)?;
        // A publish waits at least a second for the sequencer.
        in_range(
            "HERALD_TIMEOUT_SECONDS",
            self.delivery.timeout_duration().as_secs_f64(),
            1.0,
            300.0,
        )?;
        self.retention.validate()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn dedupe_window_ms(&self) -> i64 {
        self.delivery.dedupe_window_ms()
    }
    pub(crate) fn poll(&self) -> Duration {
        self.delivery.poll_interval_duration()
    }
    pub(crate) fn pool(&self) -> u32 {
        self.pool_size
    }
    pub(crate) fn timeout(&self) -> Duration {
        self.delivery.timeout_duration()
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
    pub(crate) fn settle_batch(&self) -> usize {
        self.delivery.settle_batch_size()
    }
    pub(crate) fn settle_window(&self) -> Duration {
        self.delivery.settle_window_duration()
    }
    pub(crate) fn retention_policy(&self) -> &RetentionPolicy {
        &self.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_take_off_but_not_a_name_the_table_would_ignore() {
        use herald::config::DeadLetters;
        let with = |to: DeadLetters| {
            PgConfig::new("postgres://127.0.0.1/test")
                .delivery(DeliveryConfig::default().dead_letters(to))
                .validate()
        };
        with(DeadLetters::Off).unwrap();
        let err = with(DeadLetters::Named("orders.dlq".into())).unwrap_err();
        assert_eq!(err.code(), herald::ErrorCode::Validation);
        assert!(
            err.to_string().contains("HERALD_DEAD_LETTERS=orders.dlq"),
            "{err}"
        );
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let base = PgConfig::new("postgres://h/d");
        let e = base.clone().pool_size(3).validate().unwrap_err();
        assert!(e.message().contains("HERALD_PG_POOL_SIZE"), "{e}");
        let e = base
            .clone()
            .poll_interval(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.message().contains("HERALD_POLL_INTERVAL"), "{e}");
        assert!(base.clone().schema("1abc").validate().is_err());
        assert!(base.clone().schema("pg_x").validate().is_err());
        assert!(base.clone().schema("a".repeat(50)).validate().is_err());
        assert!(base.schema("ok_1").validate().is_ok());
    }
}

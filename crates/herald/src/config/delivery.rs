//! The delivery settings every transport shares, read and checked once.
//!
//! Owns [`DeliveryConfig`]: the consumer group a service names by default,
//! the ack wait, delivery attempts before dead-lettering, handler retries
//! and the circuit breaker's settings, the dedupe window, how durable
//! stores group settlements into commits, the poll interval, the publish
//! and call timeout, and the envelope limits. A bus's
//! [`Config`](crate::Config) carries one, and each store's config is handed
//! the same one instead of reading those keys again (`herald-store` reads it
//! once for both). What a store does with them is the store's; the breaker
//! itself is built from them in the runtime.

use std::time::Duration;

use crate::config::keys::{env, spec, KeySpec};
use crate::config::retry::RetryPolicy;
use crate::config::DEFAULT_TIMEOUT;
use crate::model::contract::SchemaChecks;
use crate::model::envelope::{check_text, Limits};
use crate::model::error::Result;

/// How long a publish of an idempotency key already seen is answered with
/// the first one's `seq` instead of appending again (`HERALD_DEDUPE_WINDOW`).
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// How long a delivery may stay unsettled before it is redelivered
/// (`HERALD_ACK_WAIT`).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// Delivery attempts before an event is dead-lettered (`HERALD_MAX_DELIVER`).
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// The allowed range of `max_deliver`, for a store and for one group.
pub const MAX_DELIVER_RANGE: (u32, u32) = (1, 1000);

/// How often a store looks for commits by other processes
/// (`HERALD_POLL_INTERVAL`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Most settlements (acks, nacks, terms) a durable store commits in one
/// transaction (`HERALD_SETTLE_BATCH`).
pub const DEFAULT_SETTLE_BATCH: usize = 512;

/// How long a durable store waits for more settlements before it commits
/// (`HERALD_SETTLE_WINDOW`): none, it commits what is waiting at once, and
/// what arrives meanwhile goes in the next commit.
pub const DEFAULT_SETTLE_WINDOW: Duration = Duration::ZERO;

/// Consecutive retryable failures that open a circuit breaker
/// (`HERALD_CIRCUIT_BREAKER_THRESHOLD`).
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;

/// How long an open breaker stays open before a trial call
/// (`HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT`).
pub const DEFAULT_BREAKER_RESET_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a store puts what it dead-letters (`HERALD_DEAD_LETTERS`).
///
/// ```
/// use herald::config::DeadLetters;
/// assert_eq!("off".parse::<DeadLetters>().unwrap(), DeadLetters::Off);
/// assert_eq!(
///     "orders.dead_letters".parse::<DeadLetters>().unwrap(),
///     DeadLetters::Named("orders.dead_letters".into()),
/// );
/// assert!("two words".parse::<DeadLetters>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeadLetters {
    /// The store's own place: the topic `<environment>.dead_letters` on
    /// Kafka, the stream `<prefix>_DLQ` on NATS, the `dead_letters` table
    /// on SQLite and PostgreSQL, a bounded list in memory.
    #[default]
    StoreDefault,
    /// The topic (Kafka) or stream (NATS, with `.` as `_`) of this name:
    /// `[A-Za-z0-9._-]`, 1–249 characters. The SQL stores keep dead letters
    /// in their table and refuse a name.
    Named(String),
    /// Keep nothing: log each at warn and count it in
    /// `herald_dead_letters_discarded_total`, then settle the message.
    Off,
}

/// Which partition of a topic a partitioned store (NATS, Kafka) puts a
/// keyless event in (`HERALD_KEYLESS_PARTITION`); an event with a `key`
/// goes to its key's partition either way. The SQL and memory stores have
/// no partitions and ignore it.
///
/// ```
/// use herald::config::KeylessPartition;
/// assert_eq!("topic".parse::<KeylessPartition>().unwrap(), KeylessPartition::Topic);
/// assert!("random".parse::<KeylessPartition>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeylessPartition {
    /// Spread over the partitions (by id): a group's processes share a
    /// topic's keyless events, in no order (the default).
    #[default]
    Spread,
    /// One partition per topic (by the topic's name): a topic's keyless
    /// events stay in publish order, which a group ordered
    /// [`PerTopic`](crate::GroupOrdering::PerTopic) needs when topics have
    /// more than one partition; one process of a group reads them.
    Topic,
}

impl std::str::FromStr for KeylessPartition {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<KeylessPartition> {
        match s.trim() {
            "spread" => Ok(KeylessPartition::Spread),
            "topic" => Ok(KeylessPartition::Topic),
            other => Err(key("HERALD_KEYLESS_PARTITION").invalid(other)),
        }
    }
}

impl KeylessPartition {
    /// Refuse, with `VALIDATION`, a group of `spec` ordered
    /// [`PerTopic`](crate::GroupOrdering::PerTopic) on `store` whose new
    /// topics get `partitions` partitions and which spreads keyless events
    /// over them: it could not keep their order.
    pub fn check(self, spec: &crate::SubscribeSpec, partitions: u32, store: &str) -> Result<()> {
        let per_topic = spec.group.is_some() && spec.ordering == crate::GroupOrdering::PerTopic;
        if per_topic && partitions > 1 && self == KeylessPartition::Spread {
            return Err(crate::Error::validation(format!(
                "a group ordered per_topic needs each topic's keyless events in one partition: \
                 {store} spreads them over {partitions} partitions; set \
                 HERALD_KEYLESS_PARTITION=topic (on every publisher) or one partition per topic"
            )));
        }
        Ok(())
    }
}

/// The longest name `HERALD_DEAD_LETTERS` takes (Kafka's topic limit).
pub const MAX_DEAD_LETTERS_NAME: usize = 249;

impl std::str::FromStr for DeadLetters {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<DeadLetters> {
        let s = s.trim();
        let named = DeadLetters::Named(s.to_owned());
        match s {
            "off" => Ok(DeadLetters::Off),
            _ => named.validate().map(|()| named),
        }
    }
}

impl DeadLetters {
    /// The name a user gave, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            DeadLetters::Named(name) => Some(name),
            _ => None,
        }
    }

    /// Whether dead letters are discarded.
    pub fn is_off(&self) -> bool {
        *self == DeadLetters::Off
    }

    /// Check a name's characters and length.
    pub fn validate(&self) -> Result<()> {
        let Some(name) = self.name() else {
            return Ok(());
        };
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > MAX_DEAD_LETTERS_NAME || !name.chars().all(legal) {
            return Err(key("HERALD_DEAD_LETTERS").invalid(name));
        }
        Ok(())
    }

    /// Refused with `VALIDATION` by a store whose dead letters have one
    /// place (the SQL stores' table): a name there would be ignored.
    pub fn unnamed(&self, store: &str) -> Result<()> {
        match self.name() {
            Some(name) => Err(crate::Error::validation(format!(
                "HERALD_DEAD_LETTERS={name} is not allowed on {store}: its dead letters are its \
                 `dead_letters` table; expected off, or unset"
            ))),
            None => Ok(()),
        }
    }
}

/// The delivery settings every transport shares (DESIGN.md §9). Build in
/// code, or read the `HERALD_*` keys once with
/// [`DeliveryConfig::from_env`] and hand the result to the bus's
/// [`Config`](crate::Config) and the store's config.
///
/// ```
/// use std::time::Duration;
/// use herald::config::DeliveryConfig;
/// let d = DeliveryConfig::default().max_deliver(3).dedupe_window(Duration::ZERO);
/// d.validate().unwrap();
/// assert_eq!(d.max_deliver_attempts(), 3);
/// let bad = DeliveryConfig::default().max_deliver(0).validate().unwrap_err();
/// assert!(bad.to_string().contains("HERALD_MAX_DELIVER=0"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    group: Option<String>,
    ack_wait: Duration,
    max_deliver: u32,
    retry: RetryPolicy,
    breaker_threshold: u32,
    breaker_reset_timeout: Duration,
    dedupe_window: Duration,
    /// `HERALD_DEDUPE_WINDOW=forever`: the SQL stores' unique keys.
    dedupe_forever: bool,
    settle_batch: usize,
    settle_window: Duration,
    poll_interval: Duration,
    timeout: Duration,
    limits: Limits,
    dead_letters: DeadLetters,
    stall_after: Duration,
    keyless_partition: KeylessPartition,
    schemas: SchemaChecks,
}

/// How long a group member holding work may settle nothing before it counts
/// as stalled (`HERALD_STALL_AFTER`).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            group: None,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: DEFAULT_MAX_DELIVER,
            retry: RetryPolicy::default(),
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_reset_timeout: DEFAULT_BREAKER_RESET_TIMEOUT,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            dedupe_forever: false,
            settle_batch: DEFAULT_SETTLE_BATCH,
            settle_window: DEFAULT_SETTLE_WINDOW,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            limits: Limits::default(),
            dead_letters: DeadLetters::StoreDefault,
            stall_after: DEFAULT_STALL_AFTER,
            keyless_partition: KeylessPartition::Spread,
            schemas: SchemaChecks::Enforce,
        }
    }
}

/// The [`KeySpec`] of one of herald's own keys.
fn key(name: &str) -> &'static KeySpec {
    spec(name).expect("a key of herald's KEYS table")
}

impl DeliveryConfig {
    /// Defaults overridden by the keys that are set (the environment over
    /// `herald.toml`, see [`env`]), validated.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&env)
    }

    /// As [`from_env`](Self::from_env), reading each key through `get`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut d = DeliveryConfig::default();
        let seconds = |name: &str| key(name).seconds_from(get);
        if let Some(g) = get("HERALD_GROUP") {
            d.group = Some(g);
        }
        if let Some(v) = seconds("HERALD_ACK_WAIT")? {
            d.ack_wait = v;
        }
        if let Some(v) = key("HERALD_MAX_DELIVER").parse_from(get)? {
            d.max_deliver = v;
        }
        if let Some(v) = key("HERALD_MAX_RETRY_ATTEMPTS").parse_from(get)? {
            d.retry = d.retry.max_attempts(v);
        }
        if let Some(v) = seconds("HERALD_RETRY_BACKOFF_BASE")? {
            d.retry = d.retry.base(v);
        }
        if let Some(v) = seconds("HERALD_RETRY_MAX_DELAY")? {
            d.retry = d.retry.max_delay(v);
        }
        if let Some(v) = key("HERALD_CIRCUIT_BREAKER_THRESHOLD").parse_from(get)? {
            d.breaker_threshold = v;
        }
        if let Some(v) = seconds("HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT")? {
            // In code a breaker may reset within a millisecond; the key
            // allows what the docs say.
            key("HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT").check(v.as_secs_f64(), 1.0, 3600.0)?;
            d.breaker_reset_timeout = v;
        }
        match get("HERALD_DEDUPE_WINDOW") {
            Some(v) if v.trim() == "forever" => d = d.dedupe_forever(),
            _ => {
                if let Some(v) = seconds("HERALD_DEDUPE_WINDOW")? {
                    d.dedupe_window = v;
                }
            }
        }
        if let Some(v) = key("HERALD_SETTLE_BATCH").parse_from(get)? {
            d.settle_batch = v;
        }
        if let Some(v) = seconds("HERALD_SETTLE_WINDOW")? {
            d.settle_window = v;
        }
        if let Some(v) = seconds("HERALD_POLL_INTERVAL")? {
            d.poll_interval = v;
        }
        if let Some(v) = seconds("HERALD_TIMEOUT_SECONDS")? {
            key("HERALD_TIMEOUT_SECONDS").check(v.as_secs_f64(), 1.0, 300.0)?;
            d.timeout = v;
        }
        if let Some(v) = key("HERALD_MAX_PAYLOAD_BYTES").parse_from(get)? {
            d.limits = d.limits.max_payload_bytes(v);
        }
        if let Some(v) = key("HERALD_MAX_HEADERS").parse_from(get)? {
            d.limits = d.limits.max_headers(v);
        }
        if let Some(v) = key("HERALD_MAX_HEADER_BYTES").parse_from(get)? {
            d.limits = d.limits.max_header_bytes(v);
        }
        if let Some(v) = key("HERALD_DEAD_LETTERS").parse_from(get)? {
            d.dead_letters = v;
        }
        if let Some(v) = key("HERALD_SCHEMAS").parse_from(get)? {
            d.schemas = v;
        }
        if let Some(v) = key("HERALD_KEYLESS_PARTITION").parse_from(get)? {
            d.keyless_partition = v;
        }
        if let Some(v) = seconds("HERALD_STALL_AFTER")? {
            key("HERALD_STALL_AFTER").check(v.as_secs_f64(), 1.0, 3600.0)?;
            d.stall_after = v;
        }
        d.validate()?;
        Ok(d)
    }

    /// Check every value against its allowed range. Built in code, the
    /// timeout and the breaker's reset may be as short as 1 ms (for tests);
    /// their keys allow what the docs say.
    pub fn validate(&self) -> Result<()> {
        if let Some(g) = &self.group {
            if check_text("group", g).is_err() || g.len() > 255 {
                return Err(key("HERALD_GROUP").invalid(g));
            }
        }
        key("HERALD_ACK_WAIT").check(self.ack_wait.as_secs_f64(), 1.0, 3600.0)?;
        let (low, high) = MAX_DELIVER_RANGE;
        key("HERALD_MAX_DELIVER").check(self.max_deliver, low, high)?;
        self.retry.validate()?;
        key("HERALD_CIRCUIT_BREAKER_THRESHOLD").check(self.breaker_threshold, 1, 100)?;
        key("HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT").check(
            self.breaker_reset_timeout.as_secs_f64(),
            0.001,
            3600.0,
        )?;
        key("HERALD_DEDUPE_WINDOW").check(self.dedupe_window.as_secs(), 0, 7 * 24 * 3600)?;
        key("HERALD_SETTLE_BATCH").check(self.settle_batch, 1, 10_000)?;
        key("HERALD_SETTLE_WINDOW").check(self.settle_window.as_secs_f64(), 0.0, 0.1)?;
        key("HERALD_POLL_INTERVAL").check(self.poll_interval.as_secs_f64(), 0.01, 10.0)?;
        key("HERALD_TIMEOUT_SECONDS").check(self.timeout.as_secs_f64(), 0.001, 300.0)?;
        let limits = &self.limits;
        key("HERALD_MAX_PAYLOAD_BYTES").check(
            limits.payload_bytes(),
            1024,
            Limits::WIDEST.payload_bytes(),
        )?;
        key("HERALD_MAX_HEADERS").check(limits.headers(), 0, Limits::WIDEST.headers())?;
        key("HERALD_MAX_HEADER_BYTES").check(
            limits.header_bytes(),
            0,
            Limits::WIDEST.header_bytes(),
        )?;
        key("HERALD_STALL_AFTER").check(self.stall_after.as_secs_f64(), 0.001, 3600.0)?;
        self.dead_letters.validate()
    }

    /// The group a service's subscriptions join when they name none.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// Redeliver a delivery left unsettled this long, 1–3600 s.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }
    /// Delivery attempts before dead-lettering, 1–1000.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }
    /// How handlers and guarded publishes retry.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Consecutive retryable failures that open the circuit breaker, 1–100.
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.breaker_threshold = n;
        self
    }
    /// How long an open breaker waits before a trial call, 1 ms–1 hour.
    pub fn breaker_reset_timeout(mut self, d: Duration) -> Self {
        self.breaker_reset_timeout = d;
        self
    }
    /// Remember idempotency keys this long, 0 (off) to 7 days.
    pub fn dedupe_window(mut self, d: Duration) -> Self {
        self.dedupe_window = d;
        self.dedupe_forever = false;
        self
    }
    /// Remember idempotency keys as long as the log keeps its events, with a
    /// unique index on them (`HERALD_DEDUPE_WINDOW=forever`): SQLite and
    /// PostgreSQL only, and only without retention, which would forget
    /// them; the other stores refuse it.
    ///
    /// ```
    /// use herald::config::DeliveryConfig;
    /// let d = DeliveryConfig::default().dedupe_forever();
    /// assert!(d.dedupes_forever());
    /// assert_eq!(d.dedupe_window_ms(), i64::MAX);
    /// assert!(d.windowed_dedupe("the memory store").is_err());
    /// ```
    pub fn dedupe_forever(mut self) -> Self {
        self.dedupe_forever = true;
        self
    }
    /// Most settlements a durable store commits in one transaction,
    /// 1–10,000.
    pub fn settle_batch(mut self, n: usize) -> Self {
        self.settle_batch = n;
        self
    }
    /// How long a durable store waits for more settlements before it
    /// commits, 0–100 ms. An awaited ack returns only once its commit is
    /// durable, so each waits up to this much longer; a store under load
    /// commits more settlements per fsync.
    pub fn settle_window(mut self, d: Duration) -> Self {
        self.settle_window = d;
        self
    }
    /// How often a store looks for other processes' commits, 10 ms–10 s.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Publish and call timeout, 1 ms–300 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// The envelope limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// How long a group member holding work may settle nothing before it
    /// counts as stalled: 1 ms – 1 hour in code, 1 s – 1 hour as
    /// `HERALD_STALL_AFTER` (default [`DEFAULT_STALL_AFTER`]).
    pub fn stall_after(mut self, d: Duration) -> Self {
        self.stall_after = d;
        self
    }
    /// Where dead letters go, or [`DeadLetters::Off`].
    pub fn dead_letters(mut self, to: DeadLetters) -> Self {
        self.dead_letters = to;
        self
    }
    /// What a publish does with an event its topic's schema refuses
    /// (default [`SchemaChecks::Enforce`]).
    pub fn schemas(mut self, checks: SchemaChecks) -> Self {
        self.schemas = checks;
        self
    }
    /// Which partition a partitioned store puts keyless events in
    /// (default [`KeylessPartition::Spread`]).
    pub fn keyless_partition(mut self, p: KeylessPartition) -> Self {
        self.keyless_partition = p;
        self
    }

    /// The default group, when one is configured.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }
    /// The ack wait.
    pub fn ack_wait_duration(&self) -> Duration {
        self.ack_wait
    }
    /// Delivery attempts before dead-lettering.
    pub fn max_deliver_attempts(&self) -> u32 {
        self.max_deliver
    }
    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }
    /// Consecutive failures that open the breaker.
    pub fn breaker_threshold_count(&self) -> u32 {
        self.breaker_threshold
    }
    /// How long an open breaker waits.
    pub fn breaker_reset(&self) -> Duration {
        self.breaker_reset_timeout
    }
    /// The dedupe window (meaningless when [`dedupes_forever`](Self::dedupes_forever)).
    pub fn dedupe_window_duration(&self) -> Duration {
        self.dedupe_window
    }
    /// Whether idempotency keys are kept forever.
    pub fn dedupes_forever(&self) -> bool {
        self.dedupe_forever
    }
    /// The dedupe window in milliseconds, as the SQL stores compare it:
    /// `i64::MAX` forever, 0 off.
    pub fn dedupe_window_ms(&self) -> i64 {
        if self.dedupe_forever {
            return i64::MAX;
        }
        self.dedupe_window.as_millis().min(i64::MAX as u128) as i64
    }
    /// What a SQL store (named `store`) checks beyond [`validate`](Self::validate):
    /// its dead letters have one place, its table, so a
    /// `HERALD_DEAD_LETTERS` name is refused; and keys kept forever need
    /// every event kept (`keeps_everything`: no retention).
    ///
    /// ```
    /// use herald::config::{DeadLetters, DeliveryConfig};
    /// let forever = DeliveryConfig::default().dedupe_forever();
    /// forever.check_sql_store("the SQLite store", true).unwrap();
    /// assert!(forever.check_sql_store("the SQLite store", false).is_err());
    /// let named = DeliveryConfig::default().dead_letters(DeadLetters::Named("dlq".into()));
    /// assert!(named.check_sql_store("the SQLite store", true).is_err());
    /// ```
    pub fn check_sql_store(&self, store: &str, keeps_everything: bool) -> Result<()> {
        self.dead_letters.unnamed(store)?;
        if self.dedupe_forever && !keeps_everything {
            return Err(crate::Error::validation(format!(
                "HERALD_DEDUPE_WINDOW=forever is not allowed on {store} with retention: \
                 deleting events would forget their idempotency keys; expected seconds, \
                 0–604800 (7 days), or no HERALD_RETENTION_*"
            )));
        }
        Ok(())
    }

    /// Refused with `VALIDATION` by `store`, which keeps idempotency keys
    /// for a window only, when they are to be kept forever.
    pub fn windowed_dedupe(&self, store: &str) -> Result<()> {
        if self.dedupe_forever {
            return Err(crate::Error::validation(format!(
                "HERALD_DEDUPE_WINDOW=forever is not allowed on {store}: only SQLite and \
                 PostgreSQL keep idempotency keys forever (a unique index); expected seconds, \
                 0–604800 (7 days)"
            )));
        }
        Ok(())
    }
    /// Most settlements per commit.
    pub fn settle_batch_size(&self) -> usize {
        self.settle_batch
    }
    /// How long a store waits for more settlements before it commits.
    pub fn settle_window_duration(&self) -> Duration {
        self.settle_window
    }
    /// The poll interval.
    pub fn poll_interval_duration(&self) -> Duration {
        self.poll_interval
    }
    /// The publish and call timeout.
    pub fn timeout_duration(&self) -> Duration {
        self.timeout
    }
    /// The envelope limits.
    pub fn envelope_limits(&self) -> Limits {
        self.limits
    }
    /// The stall time.
    pub fn stall_after_duration(&self) -> Duration {
        self.stall_after
    }
    /// Where dead letters go.
    pub fn dead_letter_destination(&self) -> &DeadLetters {
        &self.dead_letters
    }
    /// What a publish does with an event its schema refuses.
    pub fn schema_checks(&self) -> SchemaChecks {
        self.schemas
    }
    /// Where a partitioned store puts keyless events.
    pub fn keyless_placement(&self) -> KeylessPartition {
        self.keyless_partition
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ErrorCode;

    fn read(pairs: &[(&str, &str)]) -> Result<DeliveryConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        DeliveryConfig::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn every_key_lands_in_its_setting() {
        let d = read(&[
            ("HERALD_GROUP", "billing"),
            ("HERALD_ACK_WAIT", "7"),
            ("HERALD_MAX_DELIVER", "9"),
            ("HERALD_MAX_RETRY_ATTEMPTS", "4"),
            ("HERALD_RETRY_BACKOFF_BASE", "0.25"),
            ("HERALD_RETRY_MAX_DELAY", "8"),
            ("HERALD_CIRCUIT_BREAKER_THRESHOLD", "11"),
            ("HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT", "12"),
            ("HERALD_DEDUPE_WINDOW", "0"),
            ("HERALD_POLL_INTERVAL", "0.05"),
            ("HERALD_SETTLE_BATCH", "64"),
            ("HERALD_SETTLE_WINDOW", "0.002"),
            ("HERALD_TIMEOUT_SECONDS", "3"),
            ("HERALD_MAX_PAYLOAD_BYTES", "4096"),
            ("HERALD_MAX_HEADERS", "3"),
            ("HERALD_MAX_HEADER_BYTES", "100"),
            ("HERALD_DEAD_LETTERS", "off"),
            ("HERALD_STALL_AFTER", "90"),
            ("HERALD_KEYLESS_PARTITION", "topic"),
            ("HERALD_SCHEMAS", "warn"),
        ])
        .unwrap();
        assert_eq!(d.group_name(), Some("billing"));
        assert_eq!(d.ack_wait_duration(), Duration::from_secs(7));
        assert_eq!(d.max_deliver_attempts(), 9);
        let retry = RetryPolicy::default()
            .max_attempts(4)
            .base(Duration::from_millis(250))
            .max_delay(Duration::from_secs(8));
        assert_eq!(d.retry_policy(), retry);
        assert_eq!(d.breaker_threshold_count(), 11);
        assert_eq!(d.breaker_reset(), Duration::from_secs(12));
        assert_eq!(d.dedupe_window_duration(), Duration::ZERO);
        assert_eq!(d.poll_interval_duration(), Duration::from_millis(50));
        assert_eq!(d.settle_batch_size(), 64);
        assert_eq!(d.settle_window_duration(), Duration::from_millis(2));
        assert_eq!(d.timeout_duration(), Duration::from_secs(3));
        let limits = Limits::default()
            .max_payload_bytes(4096)
            .max_headers(3)
            .max_header_bytes(100);
        assert_eq!(d.envelope_limits(), limits);
        assert_eq!(d.dead_letter_destination(), &DeadLetters::Off);
        assert_eq!(d.stall_after_duration(), Duration::from_secs(90));
        assert_eq!(d.keyless_placement(), KeylessPartition::Topic);
        assert_eq!(d.schema_checks(), SchemaChecks::Warn);
        let named = read(&[("HERALD_DEAD_LETTERS", "billing.dlq")]).unwrap();
        assert_eq!(named.dead_letter_destination().name(), Some("billing.dlq"));
        assert_eq!(read(&[]).unwrap(), DeliveryConfig::default());
        let forever = read(&[("HERALD_DEDUPE_WINDOW", "forever")]).unwrap();
        assert!(forever.dedupes_forever());
        assert_eq!(forever.dedupe_window_ms(), i64::MAX);
    }

    #[test]
    fn a_bad_value_names_the_key_the_value_and_the_range_in_the_docs_terms() {
        for (key, value, expected) in [
            ("HERALD_DEDUPE_WINDOW", "abc", "seconds, 0–604800 (7 days)"),
            (
                "HERALD_DEDUPE_WINDOW",
                "604801",
                "seconds, 0–604800 (7 days)",
            ),
            ("HERALD_DEDUPE_WINDOW", "-1", "seconds, 0–604800 (7 days)"),
            ("HERALD_ACK_WAIT", "0.5", "seconds, 1–3600"),
            ("HERALD_MAX_DELIVER", "0", "attempts, 1–1000"),
            ("HERALD_POLL_INTERVAL", "11", "seconds, 0.01–10"),
            ("HERALD_SETTLE_BATCH", "0", "settlements, 1–10000"),
            ("HERALD_SETTLE_WINDOW", "0.5", "seconds, 0–0.1"),
            ("HERALD_TIMEOUT_SECONDS", "0.5", "seconds, 1–300"),
            (
                "HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT",
                "0.5",
                "seconds, 1–3600",
            ),
            ("HERALD_MAX_PAYLOAD_BYTES", "10", "bytes, 1024–67108864"),
            ("HERALD_GROUP", "a\nb", "1–255 chars, no control characters"),
            ("HERALD_DEAD_LETTERS", "a b", "a topic or stream name"),
            ("HERALD_DEAD_LETTERS", "", "a topic or stream name"),
            ("HERALD_KEYLESS_PARTITION", "id", "spread, topic"),
            ("HERALD_SCHEMAS", "strict", "off, warn, enforce"),
        ] {
            let err = read(&[(key, value)]).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation);
            let text = err.to_string();
            assert!(
                text.contains(key) && text.contains(expected),
                "{key}={value}: {text}"
            );
        }
    }
}

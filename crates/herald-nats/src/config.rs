//! The transport's configuration: where NATS is, the subject prefix, how
//! topic streams are made, timings.
//!
//! Owns [`NatsConfig`], its defaults, the `HERALD_*` keys only it reads
//! ([`KEYS`]) and the range checks; the delivery settings every store
//! shares come in one [`DeliveryConfig`], read once. Naming streams and subjects is `names`'; connecting is
//! `conn`'s. A leaf: it imports nothing of the crate.

use std::time::Duration;

use herald::backend::retention::{Retention, RetentionPolicy};
use herald::config::{env, in_range, redact, DeliveryConfig, KeySpec};
pub use herald::config::{DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER};
use herald::{Error, Result};

/// How long a JetStream request (a publish's ack, stream and consumer
/// management) may take, unless `HERALD_TIMEOUT_SECONDS` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Replicas of each stream (`HERALD_NATS_REPLICAS`).
pub const DEFAULT_REPLICAS: usize = 1;
/// Partitions of a topic herald makes (`HERALD_NATS_PARTITIONS`).
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 64;

/// The keys only the NATS store reads (the shared ones are
/// [`herald::config::KEYS`]).
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[PREFIX, STORAGE, REPLICAS, PARTITIONS, MAX_BYTES];

#[rustfmt::skip]
const PREFIX: KeySpec = KeySpec { key: "HERALD_NATS_PREFIX", default: "herald.<HERALD_ENVIRONMENT>", allowed: "dot-separated tokens of [A-Za-z0-9_-], at most 64 bytes", doc: "topic `t` is subject `<prefix>.t`" };
#[rustfmt::skip]
const STORAGE: KeySpec = KeySpec { key: "HERALD_NATS_STORAGE", default: "file", allowed: "file, memory", doc: "where streams keep their messages" };
#[rustfmt::skip]
const REPLICAS: KeySpec = KeySpec { key: "HERALD_NATS_REPLICAS", default: "1", allowed: "1–5", doc: "replicas of each stream" };
#[rustfmt::skip]
const PARTITIONS: KeySpec = KeySpec { key: "HERALD_NATS_PARTITIONS", default: "8", allowed: "1–64", doc: "partitions of a topic herald makes (a topic keeps the count it was made with): a group's processes share its events by partition" };
#[rustfmt::skip]
const MAX_BYTES: KeySpec = KeySpec { key: "HERALD_NATS_MAX_BYTES", default: "unbounded", allowed: "bytes, >= 1024", doc: "bound on each topic stream; the oldest events go first" };

/// Where JetStream keeps a stream's messages (`HERALD_NATS_STORAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: survives a server restart (the default).
    #[default]
    File,
    /// In the server's memory: lost when it restarts.
    Memory,
}

/// Where NATS is and how herald lays out its streams.
///
/// ```
/// use herald_nats::NatsConfig;
/// let config = NatsConfig::new("nats://127.0.0.1:4222").prefix("shop.prod");
/// config.validate().unwrap();
/// assert_eq!(config.subject_prefix(), "shop.prod");
/// assert!(NatsConfig::new("http://x").validate().is_err());
/// assert!(NatsConfig::new("nats://h").prefix("bad prefix").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    url: String,
    prefix: String,
    storage: Storage,
    replicas: usize,
    partitions: u32,
    max_bytes: Option<u64>,
    delivery: DeliveryConfig,
    request_timeout: Duration,
    retention: RetentionPolicy,
}

impl NatsConfig {
    /// NATS at `url` (`nats://host:port`, `tls://host:port`, or several
    /// comma-separated) with the defaults: subjects under `herald.local`,
    /// or under the URL's `prefix` parameter (`nats://h:4222?prefix=orders`).
    pub fn new(url: impl Into<String>) -> Self {
        let (url, prefix) = herald::config::take_url_param(&url.into(), "prefix");
        NatsConfig {
            url,
            prefix: prefix.unwrap_or_else(|| "herald.local".to_owned()),
            storage: Storage::File,
            replicas: DEFAULT_REPLICAS,
            partitions: DEFAULT_PARTITIONS,
            max_bytes: None,
            delivery: DeliveryConfig::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retention: RetentionPolicy::default(),
        }
    }

    /// `HERALD_STORE` (a `nats://` URL), `HERALD_NATS_PREFIX` (default
    /// `herald.<HERALD_ENVIRONMENT>`), `HERALD_NATS_STORAGE`,
    /// `HERALD_NATS_REPLICAS`, `HERALD_NATS_PARTITIONS`,
    /// `HERALD_NATS_MAX_BYTES`, the retention keys
    /// and the delivery settings ([`DeliveryConfig::from_env`]; its timeout,
    /// when `HERALD_TIMEOUT_SECONDS` is set, bounds JetStream requests),
    /// validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        let url = env("HERALD_STORE")
            .ok_or_else(|| Error::validation("HERALD_STORE is not set (expected nats://…)"))?;
        let named = herald::config::take_url_param(&url, "prefix").1.is_some();
        let mut c = NatsConfig::new(url);
        if env("HERALD_TIMEOUT_SECONDS").is_some() {
            c.request_timeout = delivery.timeout_duration();
        }
        c.delivery = delivery;
        let environment = env("HERALD_ENVIRONMENT").unwrap_or_else(|| "local".to_owned());
        if !named {
            c.prefix = PREFIX
                .value()
                .unwrap_or_else(|| format!("herald.{environment}"));
        }
        if let Some(s) = STORAGE.value() {
            c.storage = match s.as_str() {
                "file" => Storage::File,
                "memory" => Storage::Memory,
                _ => return Err(STORAGE.invalid(s)),
            };
        }
        if let Some(v) = REPLICAS.parse()? {
            c.replicas = v;
        }
        if let Some(v) = PARTITIONS.parse()? {
            c.partitions = v;
        }
        if let Some(v) = MAX_BYTES.parse()? {
            c.max_bytes = Some(v);
        }
        c.retention.read_env()?;
        c.validate()?;
        Ok(c)
    }

    /// Put herald's subjects under `prefix` (dot-separated tokens of
    /// `[A-Za-z0-9_-]`): topic `orders.placed` is subject
    /// `<prefix>.orders.placed`, in stream `<PREFIX>_orders~placed`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The subject prefix.
    pub fn subject_prefix(&self) -> &str {
        &self.prefix
    }

    /// Keep streams on disk or in memory.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Replicas of each stream (1–5; more than 1 needs a cluster).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Partitions of each topic herald makes from now on (1–64; default
    /// 8). herald publishes an event on the partition its key hashes to
    /// (a keyless one by its id), and a consumer group's processes share
    /// its topics by partition: each reads its share straight from
    /// JetStream, each key in order. A topic keeps the count it was made
    /// with, whatever later processes are configured with, so one key's
    /// events always share a partition. One partition keeps a group's
    /// whole topic in `seq` order, read by one process at a time.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// Bound each topic stream's bytes; the oldest events go first.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Remember idempotency keys this long (1 s – 7 days).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.delivery = self.delivery.dedupe_window(window);
        self
    }

    /// How long a JetStream request may take (1–300 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }

    /// Keep events by `r` unless a topic has its own rule: the topic
    /// streams' `max_age` and `max_msgs`.
    pub fn retention(mut self, r: Retention) -> Self {
        self.retention.set_default(r);
        self
    }

    /// Keep the events of topics matching `pattern` by `r`.
    pub fn retention_for(mut self, pattern: &str, r: Retention) -> Result<Self> {
        self.retention.set_topic(pattern, r)?;
        Ok(self)
    }

    /// Use `policy` for retention.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// Check every value; a `VALIDATION` error names the key, the value and
    /// what is allowed.
    pub fn validate(&self) -> Result<()> {
        let schemes = ["nats://", "tls://", "ws://", "wss://"];
        let urls_ok = self
            .url
            .split(',')
            .all(|u| schemes.iter().any(|s| u.trim().starts_with(s)));
        if !urls_ok {
            return Err(Error::validation(format!(
                "HERALD_STORE {:?} is not a nats:// URL (nats://, tls://, ws:// or wss://, comma-separated)",
                redact(&self.url)
            )));
        }
        if let Some((_, params)) = self.url.split_once('?') {
            return Err(Error::validation(format!(
                "HERALD_STORE {:?} has URL parameters herald does not read ({params:?}): a NATS URL takes only `prefix` (the subject prefix)",
                redact(&self.url)
            )));
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if self.prefix.len() > 64 || !self.prefix.split('.').all(token_ok) {
            return Err(PREFIX.invalid(format_args!("{:?}", self.prefix)));
        }
        REPLICAS.check(self.replicas, 1, 5)?;
        PARTITIONS.check(self.partitions, 1, MAX_PARTITIONS)?;
        if let Some(b) = self.max_bytes {
            MAX_BYTES.check(b, 1024, i64::MAX as u64)?;
        }
        self.delivery.validate()?;
        self.delivery.windowed_dedupe("the NATS store")?;
        // JetStream's duplicate window is at least a second.
        in_range(
            "HERALD_DEDUPE_WINDOW",
            self.delivery.dedupe_window_duration().as_secs_f64(),
            1.0,
            7.0 * 86_400.0,
        )?;
        in_range(
            "HERALD_TIMEOUT_SECONDS",
            self.request_timeout.as_secs_f64(),
            1.0,
            300.0,
        )?;
        self.retention.validate()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
    pub(crate) fn storage_kind(&self) -> Storage {
        self.storage
    }
    pub(crate) fn replica_count(&self) -> usize {
        self.replicas
    }
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions
    }
    pub(crate) fn byte_limit(&self) -> Option<u64> {
        self.max_bytes
    }
    pub(crate) fn duplicate_window(&self) -> Duration {
        self.delivery.dedupe_window_duration()
    }
    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout
    }
    pub(crate) fn dead_letters(&self) -> &herald::config::DeadLetters {
        self.delivery.dead_letter_destination()
    }
    pub(crate) fn deliveries(&self) -> u32 {
        self.delivery.max_deliver_attempts()
    }
    pub(crate) fn keyless(&self) -> herald::config::KeylessPartition {
        self.delivery.keyless_placement()
    }
    pub(crate) fn retention_policy(&self) -> &RetentionPolicy {
        &self.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::ErrorCode;

    #[test]
    fn bad_values_name_their_key() {
        let base = NatsConfig::new("nats://127.0.0.1:4222");
        for (config, key) in [
            (base.clone().replicas(0), "HERALD_NATS_REPLICAS"),
            (base.clone().partitions(0), "HERALD_NATS_PARTITIONS"),
            (base.clone().partitions(65), "HERALD_NATS_PARTITIONS"),
            (
                base.clone()
                    .delivery(DeliveryConfig::default().max_deliver(0)),
                "HERALD_MAX_DELIVER",
            ),
            (
                base.clone().dedupe_window(Duration::from_millis(10)),
                "HERALD_DEDUPE_WINDOW",
            ),
            (base.clone().prefix("a..b"), "HERALD_NATS_PREFIX"),
            (base.clone().prefix("a.*"), "HERALD_NATS_PREFIX"),
            (base.clone().max_bytes(10), "HERALD_NATS_MAX_BYTES"),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation);
            assert!(err.to_string().contains(key), "{err}");
        }
        let many = NatsConfig::new("nats://a:4222, nats://b:4222");
        many.validate().unwrap();
    }

    #[test]
    fn a_url_parameter_other_than_prefix_is_refused() {
        let named = NatsConfig::new("nats://h:4222?prefix=orders");
        named.validate().unwrap();
        assert_eq!(named.subject_prefix(), "orders");
        for url in [
            "nats://h:4222?namespace=orders",
            "nats://h:4222?prefix=orders&namespace=x",
        ] {
            let err = NatsConfig::new(url).validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation);
            assert!(err.to_string().contains("namespace"), "{err}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        let err = NatsConfig::new("http://u:secret@h").validate().unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}

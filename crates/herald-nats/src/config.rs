//! The transport's configuration: where NATS is, the subject prefix, how
//! topic streams are made, timings.
//!
//! Owns [`NatsConfig`], its defaults, the `HERALD_*` keys it reads and the
//! range checks. Naming streams and subjects is `names`'; connecting is
//! `store`'s.

use std::time::Duration;

use herald::config::{env, env_parse, in_range, redact, seconds};
use herald::retention::{Retention, RetentionPolicy};
use herald::{Error, Result};

/// How long a `Nats-Msg-Id` is remembered (`HERALD_DEDUPE_WINDOW`): the
/// topic streams' duplicate window.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// How long a JetStream request (a publish's ack, stream and consumer
/// management) may take (`HERALD_TIMEOUT_SECONDS`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Delivery attempts before a message is dead-lettered (`HERALD_MAX_DELIVER`).
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// Replicas of each stream (`HERALD_NATS_REPLICAS`).
pub const DEFAULT_REPLICAS: usize = 1;

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
    max_bytes: Option<u64>,
    dedupe_window: Duration,
    request_timeout: Duration,
    max_deliver: u32,
    retention: RetentionPolicy,
}

impl NatsConfig {
    /// NATS at `url` (`nats://host:port`, `tls://host:port`, or several
    /// comma-separated) with the defaults: subjects under `herald.local`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            prefix: "herald.local".to_owned(),
            storage: Storage::File,
            replicas: DEFAULT_REPLICAS,
            max_bytes: None,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_deliver: DEFAULT_MAX_DELIVER,
            retention: RetentionPolicy::default(),
        }
    }

    /// `HERALD_STORE` (a `nats://` URL), `HERALD_NATS_PREFIX` (default
    /// `herald.<HERALD_ENVIRONMENT>`), `HERALD_NATS_STORAGE`,
    /// `HERALD_NATS_REPLICAS`, `HERALD_NATS_MAX_BYTES`,
    /// `HERALD_DEDUPE_WINDOW`, `HERALD_TIMEOUT_SECONDS`,
    /// `HERALD_MAX_DELIVER`, `HERALD_RETENTION_MAX_AGE` and
    /// `HERALD_RETENTION_MAX_EVENTS`, validated.
    pub fn from_env() -> Result<Self> {
        let url = env("HERALD_STORE")
            .ok_or_else(|| Error::validation("HERALD_STORE is not set (expected nats://…)"))?;
        let mut c = NatsConfig::new(url);
        let environment = env("HERALD_ENVIRONMENT").unwrap_or_else(|| "local".to_owned());
        c.prefix = env("HERALD_NATS_PREFIX").unwrap_or_else(|| format!("herald.{environment}"));
        if let Some(s) = env("HERALD_NATS_STORAGE") {
            c.storage = match s.as_str() {
                "file" => Storage::File,
                "memory" => Storage::Memory,
                _ => {
                    return Err(herald::config::invalid(
                        "HERALD_NATS_STORAGE",
                        s,
                        "file or memory",
                    ))
                }
            };
        }
        if let Some(v) = env_parse("HERALD_NATS_REPLICAS")? {
            c.replicas = v;
        }
        if let Some(v) = env_parse("HERALD_NATS_MAX_BYTES")? {
            c.max_bytes = Some(v);
        }
        if let Some(v) = env_parse::<f64>("HERALD_DEDUPE_WINDOW")? {
            c.dedupe_window = seconds("HERALD_DEDUPE_WINDOW", v)?;
        }
        if let Some(v) = env_parse::<f64>("HERALD_TIMEOUT_SECONDS")? {
            c.request_timeout = seconds("HERALD_TIMEOUT_SECONDS", v)?;
        }
        if let Some(v) = env_parse("HERALD_MAX_DELIVER")? {
            c.max_deliver = v;
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

    /// Bound each topic stream's bytes; the oldest events go first.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Remember idempotency keys this long (1 s – 7 days).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// How long a JetStream request may take (1–300 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Delivery attempts before a message is dead-lettered (1–1000).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
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
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if self.prefix.len() > 64 || !self.prefix.split('.').all(token_ok) {
            return Err(Error::validation(format!(
                "HERALD_NATS_PREFIX {:?} must be dot-separated tokens of [A-Za-z0-9_-], at most 64 bytes",
                self.prefix
            )));
        }
        in_range("HERALD_NATS_REPLICAS", self.replicas, 1, 5)?;
        if let Some(b) = self.max_bytes {
            in_range("HERALD_NATS_MAX_BYTES", b, 1024, i64::MAX as u64)?;
        }
        in_range(
            "HERALD_DEDUPE_WINDOW",
            self.dedupe_window.as_secs_f64(),
            1.0,
            7.0 * 86_400.0,
        )?;
        in_range(
            "HERALD_TIMEOUT_SECONDS",
            self.request_timeout.as_secs_f64(),
            1.0,
            300.0,
        )?;
        in_range("HERALD_MAX_DELIVER", self.max_deliver, 1, 1000)?;
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
    pub(crate) fn byte_limit(&self) -> Option<u64> {
        self.max_bytes
    }
    pub(crate) fn duplicate_window(&self) -> Duration {
        self.dedupe_window
    }
    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout
    }
    pub(crate) fn deliveries(&self) -> u32 {
        self.max_deliver
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
            (base.clone().max_deliver(0), "HERALD_MAX_DELIVER"),
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
    fn passwords_are_redacted() {
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        let err = NatsConfig::new("http://u:secret@h").validate().unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}

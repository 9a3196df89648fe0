//! Configuration: the bus's settings, the delivery settings every store
//! shares, and the rules every herald config follows.
//!
//! Owns [`Config`] (the bus's own settings: source, environment,
//! subscription defaults, and its [`DeliveryConfig`]), the named default
//! constants the docs cite, the [`KeySpec`] tables and the layers a
//! `HERALD_*` key is read from ([`keys`]), the [`RetryPolicy`], and the
//! helpers other components' configs use to validate values (DESIGN.md §9):
//! a bad value is a `VALIDATION` error that names the key, the value and the
//! allowed range, at build time, never later.
//!
//! Transport settings live with their transport (`MemoryConfig` in the
//! `memory` module, each store's config in its crate).

pub mod delivery;
pub mod keys;
pub mod retry;

use std::time::Duration;

pub use delivery::{
    DeadLetters, DeliveryConfig, KeylessPartition, DEFAULT_ACK_WAIT, DEFAULT_BREAKER_RESET_TIMEOUT,
    DEFAULT_BREAKER_THRESHOLD, DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_POLL_INTERVAL,
};
pub use keys::{
    env, env_parse, file_path, origin, set_command_line, set_defaults, set_file_values, spec,
    KeySpec, Origin, KEYS,
};
pub use retry::RetryPolicy;

pub use crate::model::envelope::{
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
};

use crate::model::envelope::{check_text, Limits};
use crate::model::error::{Error, Result};
use crate::model::start::StartPosition;

/// Default number of undelivered events a subscription buffers.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;

/// Default number of deliveries a group member holds at once (claimed and
/// not yet settled): the most one claim leases, and the member's prefetch.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The allowed range of a member's `max_in_flight`.
pub const MAX_IN_FLIGHT_RANGE: (usize, usize) = (1, 10_000);

/// Default publish and call timeout (`HERALD_TIMEOUT_SECONDS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default environment (`HERALD_ENVIRONMENT`).
pub const DEFAULT_ENVIRONMENT: &str = "local";

/// The bus's settings. Build in code, or load the same keys from the
/// environment with [`Config::from_env`]; [`Config::validate`] runs on
/// `Bus::builder().build()`.
///
/// ```
/// use std::time::Duration;
/// use herald::Config;
/// let cfg = Config::default().source("billing").timeout(Duration::from_secs(5));
/// cfg.validate().unwrap();
/// let bad = Config::default().timeout(Duration::from_secs(0)).validate().unwrap_err();
/// assert!(bad.to_string().contains("HERALD_TIMEOUT_SECONDS"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    source: Option<String>,
    environment: String,
    subscription_buffer: usize,
    start_position: StartPosition,
    delivery: DeliveryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            environment: DEFAULT_ENVIRONMENT.into(),
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            start_position: StartPosition::Latest,
            delivery: DeliveryConfig::default(),
        }
    }
}

impl Config {
    /// Defaults overridden by the `HERALD_*` variables that are set
    /// (the delivery settings with [`DeliveryConfig::from_env`]), validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with delivery settings already read
    /// (so a service that opens a store reads them once for both).
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        let mut c = Config {
            delivery,
            ..Config::default()
        };
        if let Some(v) = env("HERALD_SOURCE") {
            c.source = Some(v);
        }
        if let Some(v) = env("HERALD_ENVIRONMENT") {
            c.environment = v;
        }
        if let Some(v) = env_parse("HERALD_SUBSCRIPTION_BUFFER")? {
            c.subscription_buffer = v;
        }
        if let Some(v) = env("HERALD_START_POSITION") {
            c.start_position = match v.as_str() {
                "earliest" => StartPosition::Earliest,
                "latest" => StartPosition::Latest,
                _ => {
                    return Err(invalid(
                        "HERALD_START_POSITION",
                        &v,
                        "`earliest` or `latest`",
                    ))
                }
            };
        }
        c.validate()?;
        Ok(c)
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = &self.source {
            check_text("source", s).map_err(|_| {
                invalid(
                    "HERALD_SOURCE",
                    s,
                    "non-empty, no control characters, at most 1024 bytes",
                )
            })?;
        }
        check_environment(&self.environment)?;
        self.delivery.validate()?;
        check_timeout(self.delivery.timeout_duration())?;
        in_range(
            "HERALD_SUBSCRIPTION_BUFFER",
            self.subscription_buffer,
            1,
            1_000_000,
        )?;
        if let StartPosition::Seq(0) = self.start_position {
            return Err(invalid(
                "HERALD_START_POSITION",
                "seq 0",
                "`earliest`, `latest`, a seq >= 1 or a time",
            ));
        }
        Ok(())
    }

    /// The producing service's name (default: the binary's name).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// The environment that namespaces streams and topics on shared brokers.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }
    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }
    /// Publish and call timeout, 1–300 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.delivery = self.delivery.timeout(timeout);
        self
    }
    /// Largest payload, 1024 B – 64 MiB; exactly the limit passes.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        let limits = self.delivery.envelope_limits().max_payload_bytes(n);
        self.delivery = self.delivery.limits(limits);
        self
    }
    /// Most headers on one message, 0–1024.
    pub fn max_headers(mut self, n: usize) -> Self {
        let limits = self.delivery.envelope_limits().max_headers(n);
        self.delivery = self.delivery.limits(limits);
        self
    }
    /// Most bytes of header names and values together, 0–1 MiB.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        let limits = self.delivery.envelope_limits().max_header_bytes(n);
        self.delivery = self.delivery.limits(limits);
        self
    }
    /// Default subscription buffer, 1–1,000,000 undelivered events.
    pub fn subscription_buffer(mut self, n: usize) -> Self {
        self.subscription_buffer = n;
        self
    }
    /// The start of a subscription, handler or group that does not choose
    /// its own (see [`StartPosition`] for when a start applies).
    pub fn start_position(mut self, start: StartPosition) -> Self {
        self.start_position = start;
        self
    }
    /// Default ack wait of new subscriptions, 1–3600 s: an unsettled delivery
    /// is redelivered after it.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.delivery = self.delivery.ack_wait(wait);
        self
    }

    /// The configured source, else the running binary's name, else `herald`.
    pub fn effective_source(&self) -> String {
        self.source.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .filter(|s| check_text("source", s).is_ok())
                .unwrap_or_else(|| "herald".into())
        })
    }
    /// The environment.
    pub fn environment_name(&self) -> &str {
        &self.environment
    }
    /// The delivery settings.
    pub fn delivery_config(&self) -> &DeliveryConfig {
        &self.delivery
    }
    /// The publish and call timeout.
    pub fn timeout_duration(&self) -> Duration {
        self.delivery.timeout_duration()
    }
    /// The envelope limits.
    pub fn limits(&self) -> Limits {
        self.delivery.envelope_limits()
    }
    /// The default subscription buffer.
    pub fn buffer(&self) -> usize {
        self.subscription_buffer
    }
    /// The default start position.
    pub fn start(&self) -> StartPosition {
        self.start_position
    }
    /// The default ack wait.
    pub fn ack_wait_duration(&self) -> Duration {
        self.delivery.ack_wait_duration()
    }
}

/// Check an environment name (`HERALD_ENVIRONMENT`): `[a-z0-9_-]+`.
pub fn check_environment(environment: &str) -> Result<()> {
    let ok = !environment.is_empty()
        && environment
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid("HERALD_ENVIRONMENT", environment, "[a-z0-9_-]+"))
    }
}

/// Check a publish and call timeout (`HERALD_TIMEOUT_SECONDS`): 1–300 s.
pub fn check_timeout(timeout: Duration) -> Result<()> {
    in_range("HERALD_TIMEOUT_SECONDS", timeout.as_secs_f64(), 1.0, 300.0)
}

/// A `VALIDATION` error naming `key`, the bad `value` and what is `allowed`.
pub fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Error {
    Error::validation(format!("{key}={value} is not allowed: expected {allowed}"))
}

/// Check `lo <= value <= hi`.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if value < lo || value > hi {
        let allowed = spec(key).map_or_else(|| format!("{lo}..={hi}"), |s| s.allowed.to_owned());
        return Err(invalid(key, &value, &allowed));
    }
    Ok(())
}

/// Seconds as a duration; negative, NaN or infinite values are refused.
pub fn seconds(key: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| invalid(key, v, "a non-negative number of seconds"))
}

/// `url` without its query parameter `name`, and that parameter's value:
/// how a store URL carries what a store's own setting would
/// (`postgres://h/db?schema=orders`, `nats://h:4222?prefix=orders`). The
/// other parameters stay, for the driver.
///
/// ```
/// use herald::config::take_url_param;
/// let (url, schema) = take_url_param("postgres://h/db?sslmode=disable&schema=orders", "schema");
/// assert_eq!((url.as_str(), schema.as_deref()), ("postgres://h/db?sslmode=disable", Some("orders")));
/// assert_eq!(take_url_param("postgres://h/db", "schema"), ("postgres://h/db".to_owned(), None));
/// ```
pub fn take_url_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| match p.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => !p.is_empty(),
        })
        .collect();
    let url = match rest.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", rest.join("&")),
    };
    (url, value)
}

/// `url` with any password replaced by `***`, for logs and errors.
///
/// ```
/// assert_eq!(herald::config::redact("nats://u:pw@h:4222"), "nats://u:***@h:4222");
/// ```
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn defaults_are_the_documented_constants_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.timeout_duration(), Duration::from_secs(30));
        assert_eq!(c.limits().payload_bytes(), 1024 * 1024);
        assert_eq!(c.buffer(), DEFAULT_SUBSCRIPTION_BUFFER);
        assert_eq!(c.start(), StartPosition::Latest);
        assert_eq!(c.environment_name(), "local");
        assert_eq!(c.ack_wait_duration(), DEFAULT_ACK_WAIT);
    }

    #[test]
    fn every_out_of_range_value_names_its_key() {
        let cases = [
            (
                Config::default().timeout(Duration::from_millis(500)),
                "HERALD_TIMEOUT_SECONDS",
            ),
            (
                Config::default().timeout(Duration::from_secs(301)),
                "HERALD_TIMEOUT_SECONDS",
            ),
            (
                Config::default().max_payload_bytes(1023),
                "HERALD_MAX_PAYLOAD_BYTES",
            ),
            (
                Config::default().max_payload_bytes(64 * 1024 * 1024 + 1),
                "HERALD_MAX_PAYLOAD_BYTES",
            ),
            (
                Config::default().subscription_buffer(0),
                "HERALD_SUBSCRIPTION_BUFFER",
            ),
            (
                Config::default().ack_wait(Duration::from_millis(999)),
                "HERALD_ACK_WAIT",
            ),
            (Config::default().environment("Prod"), "HERALD_ENVIRONMENT"),
            (Config::default().source(""), "HERALD_SOURCE"),
            (Config::default().source("a\nb"), "HERALD_SOURCE"),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn seconds_refuse_negative_and_nan() {
        assert!(seconds("K", -1.0).is_err());
        assert!(seconds("K", f64::NAN).is_err());
        assert_eq!(seconds("K", 0.5).unwrap(), Duration::from_millis(500));
    }
}

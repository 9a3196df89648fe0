//! Configuration of the bus, and the rules every herald config follows.
//!
//! Owns [`Config`] (the bus's own settings: source, timeouts, size limits,
//! subscription defaults), the named default constants the docs cite, and the
//! helpers other components' configs use to read `HERALD_*` environment
//! variables and to validate values (DESIGN.md §9): a bad value is a
//! `VALIDATION` error that names the key, the value and the allowed range, at
//! build time, never later.
//!
//! Transport settings live with their transport (`MemoryConfig` in the
//! `memory` module).

use std::time::Duration;

use crate::envelope::{
    check_text, Limits, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
};
use crate::error::{Error, Result};
use crate::subscription::{StartPosition, DEFAULT_ACK_WAIT, DEFAULT_SUBSCRIPTION_BUFFER};

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
    timeout: Duration,
    max_payload_bytes: usize,
    max_headers: usize,
    max_header_bytes: usize,
    subscription_buffer: usize,
    start_position: StartPosition,
    ack_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            environment: DEFAULT_ENVIRONMENT.into(),
            timeout: DEFAULT_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            start_position: StartPosition::Latest,
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }
}

impl Config {
    /// Defaults overridden by the `HERALD_*` variables that are set, validated.
    pub fn from_env() -> Result<Self> {
        let mut c = Config::default();
        if let Some(v) = env("HERALD_SOURCE") {
            c.source = Some(v);
        }
        if let Some(v) = env("HERALD_ENVIRONMENT") {
            c.environment = v;
        }
        if let Some(v) = env_parse::<f64>("HERALD_TIMEOUT_SECONDS")? {
            c.timeout = seconds("HERALD_TIMEOUT_SECONDS", v)?;
        }
        if let Some(v) = env_parse("HERALD_MAX_PAYLOAD_BYTES")? {
            c.max_payload_bytes = v;
        }
        if let Some(v) = env_parse("HERALD_MAX_HEADERS")? {
            c.max_headers = v;
        }
        if let Some(v) = env_parse("HERALD_MAX_HEADER_BYTES")? {
            c.max_header_bytes = v;
        }
        if let Some(v) = env_parse("HERALD_SUBSCRIPTION_BUFFER")? {
            c.subscription_buffer = v;
        }
        if let Some(v) = env_parse::<f64>("HERALD_ACK_WAIT")? {
            c.ack_wait = seconds("HERALD_ACK_WAIT", v)?;
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
        check_timeout(self.timeout)?;
        in_range(
            "HERALD_MAX_PAYLOAD_BYTES",
            self.max_payload_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        in_range("HERALD_MAX_HEADERS", self.max_headers, 0, 1024)?;
        in_range(
            "HERALD_MAX_HEADER_BYTES",
            self.max_header_bytes,
            0,
            1024 * 1024,
        )?;
        in_range(
            "HERALD_SUBSCRIPTION_BUFFER",
            self.subscription_buffer,
            1,
            1_000_000,
        )?;
        in_range("HERALD_ACK_WAIT", self.ack_wait.as_secs_f64(), 1.0, 3600.0)?;
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
    /// Publish and call timeout, 1–300 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Largest payload, 1024 B – 64 MiB; exactly the limit passes.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }
    /// Most headers on one message, 0–1024.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }
    /// Most bytes of header names and values together, 0–1 MiB.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }
    /// Default subscription buffer, 1–1,000,000 undelivered events.
    pub fn subscription_buffer(mut self, n: usize) -> Self {
        self.subscription_buffer = n;
        self
    }
    /// Default start position of new subscriptions.
    pub fn start_position(mut self, start: StartPosition) -> Self {
        self.start_position = start;
        self
    }
    /// Default ack wait of new subscriptions, 1–3600 s: an unsettled delivery
    /// is redelivered after it.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
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
    /// The publish and call timeout.
    pub fn timeout_duration(&self) -> Duration {
        self.timeout
    }
    /// The envelope limits.
    pub fn limits(&self) -> Limits {
        Limits::default()
            .max_payload_bytes(self.max_payload_bytes)
            .max_headers(self.max_headers)
            .max_header_bytes(self.max_header_bytes)
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
        self.ack_wait
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
        return Err(invalid(key, &value, &format!("{lo}..={hi}")));
    }
    Ok(())
}

/// Where an effective setting came from (see [`origin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (see [`set_command_line`]).
    CommandLine,
    /// The process environment.
    Env,
    /// The configuration file at this path (see [`set_file_values`]).
    File(String),
    /// Nothing set it: the documented default (or the running program's,
    /// see [`set_defaults`]) applies.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::Env => f.write_str("environment"),
            Origin::File(path) => write!(f, "file {path}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

type Values = std::collections::BTreeMap<String, String>;

/// The layers beside the environment, under their `HERALD_*` keys.
struct Layers {
    command_line: Values,
    file: Option<(String, Values)>,
    defaults: Values,
}

static LAYERS: parking_lot::RwLock<Layers> = parking_lot::RwLock::new(Layers {
    command_line: Values::new(),
    file: None,
    defaults: Values::new(),
});

/// Install the values a configuration file gave (a `herald.toml`, flattened
/// by its reader into `HERALD_*` keys) beneath the environment: from now on
/// [`env`], and so every component's `from_env`, reads a key from the
/// environment when it is set there and from these values otherwise.
/// Replaces any file installed before.
///
/// ```
/// use herald::config::{self, Origin};
/// config::set_file_values("herald.toml", [("HERALD_DOC_FILE_KEY".into(), "7".into())]);
/// assert_eq!(config::env("HERALD_DOC_FILE_KEY").as_deref(), Some("7"));
/// assert_eq!(config::origin("HERALD_DOC_FILE_KEY"), Origin::File("herald.toml".into()));
/// ```
pub fn set_file_values(
    path: impl Into<String>,
    values: impl IntoIterator<Item = (String, String)>,
) {
    LAYERS.write().file = Some((path.into(), values.into_iter().collect()));
}

/// Install command-line flags' values above the environment (a program's
/// `--store` over `HERALD_STORE`, say).
pub fn set_command_line(values: impl IntoIterator<Item = (String, String)>) {
    LAYERS.write().command_line.extend(values);
}

/// Install the running program's own defaults beneath everything else
/// (where they differ from the library's, as `herald serve`'s store does).
pub fn set_defaults(values: impl IntoIterator<Item = (String, String)>) {
    LAYERS.write().defaults.extend(values);
}

/// `key`'s effective value and where it came from: command line, then
/// environment, then file, then the program's defaults. Empty values count
/// as unset.
fn lookup(key: &str) -> Option<(String, Origin)> {
    let set = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
    let layers = LAYERS.read();
    if let Some(v) = set(layers.command_line.get(key)) {
        return Some((v, Origin::CommandLine));
    }
    if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
        return Some((v, Origin::Env));
    }
    if let Some((path, values)) = &layers.file {
        if let Some(v) = set(values.get(key)) {
            return Some((v, Origin::File(path.clone())));
        }
    }
    set(layers.defaults.get(key)).map(|v| (v, Origin::Default))
}

/// Where `key`'s effective value comes from.
pub fn origin(key: &str) -> Origin {
    lookup(key).map_or(Origin::Default, |(_, origin)| origin)
}

/// The setting `key`, when set and non-empty: from the command line, the
/// environment, the configuration file or the program's defaults, in that
/// order (see [`set_file_values`]).
pub fn env(key: &str) -> Option<String> {
    lookup(key).map(|(v, _)| v)
}

/// The variable `key` parsed, when set; a value that does not parse is an error
/// naming it.
pub fn env_parse<T: std::str::FromStr>(key: &str) -> Result<Option<T>> {
    env(key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| invalid(key, &v, &format!("a {}", std::any::type_name::<T>())))
        })
        .transpose()
}

/// Seconds as a duration; negative, NaN or infinite values are refused.
pub fn seconds(key: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| invalid(key, v, "a non-negative number of seconds"))
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

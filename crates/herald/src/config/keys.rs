//! The `HERALD_*` keys: where a key's value comes from, and what each key
//! of herald's own allows.
//!
//! Owns the layers a value is read from (command line, environment,
//! `herald.toml`, the program's defaults: [`env`], [`origin`]) and
//! [`KeySpec`], the table row every component keeps for each key it reads
//! (key, default, allowed range in the docs' terms, one line of doc), with
//! [`KEYS`] for the keys of this crate and those every store shares. The
//! store crates and the server keep their own tables; what a value means is
//! their config's business, not this module's.
//!
//! The layers are the process's configuration source, as its environment
//! is: a component reads them once, when its config is built, and what it
//! runs with is held by that config (and so by its bus), never looked up
//! again.

use crate::config::{invalid, DEFAULT_ENVIRONMENT};
use crate::model::error::Result;

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
/// [`env()`], and so every component's `from_env`, reads a key from the
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

/// The path of the configuration file installed by [`set_file_values`], if
/// any.
pub fn file_path() -> Option<String> {
    LAYERS.read().file.as_ref().map(|(path, _)| path.clone())
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

/// The variable `key` parsed, when set; a value that does not parse is a
/// `VALIDATION` error naming the key, the value and what is allowed (from
/// [`KEYS`] when the key is one of herald's, else the kind of value).
///
/// ```
/// std::env::set_var("HERALD_DEDUPE_WINDOW", "abc");
/// let err = herald::config::env_parse::<f64>("HERALD_DEDUPE_WINDOW").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "VALIDATION: HERALD_DEDUPE_WINDOW=abc is not allowed: expected seconds, 0–604800 (7 days), or forever (SQLite, PostgreSQL)"
/// );
/// # std::env::remove_var("HERALD_DEDUPE_WINDOW");
/// ```
pub fn env_parse<T: std::str::FromStr>(key: &str) -> Result<Option<T>> {
    if let Some(spec) = spec(key) {
        return spec.parse();
    }
    env(key)
        .map(|v| {
            v.trim().parse().map_err(|_| {
                let kind = match std::any::type_name::<T>() {
                    "f32" | "f64" => "a number",
                    "bool" => "true or false",
                    "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number",
                    _ => "a value of its kind",
                };
                invalid(key, &v, kind)
            })
        })
        .transpose()
}

/// One `HERALD_*` key a component reads: its default and what is allowed,
/// in the terms of the docs' configuration tables, and what it sets.
/// Every component keeps a table of them; `herald config`, `herald serve
/// --print-config` and the `herald.toml` check list the tables, and a test
/// holds them to the README's.
///
/// ```
/// use herald::config::KeySpec;
/// const WINDOW: KeySpec = KeySpec {
///     key: "HERALD_DOC_WINDOW",
///     default: "120",
///     allowed: "seconds, 0–604800 (7 days)",
///     doc: "how long an idempotency key is remembered",
/// };
/// std::env::set_var("HERALD_DOC_WINDOW", "abc");
/// assert_eq!(
///     WINDOW.seconds().unwrap_err().to_string(),
///     "VALIDATION: HERALD_DOC_WINDOW=abc is not allowed: expected seconds, 0–604800 (7 days)"
/// );
/// std::env::set_var("HERALD_DOC_WINDOW", "1.5");
/// assert_eq!(WINDOW.seconds().unwrap(), Some(std::time::Duration::from_millis(1500)));
/// # std::env::remove_var("HERALD_DOC_WINDOW");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// The key.
    pub key: &'static str,
    /// Its default, as the docs write it.
    pub default: &'static str,
    /// What a value may be.
    pub allowed: &'static str,
    /// What it sets, in one line.
    pub doc: &'static str,
}

impl KeySpec {
    /// The key's value, when set (see [`env`]).
    pub fn value(&self) -> Option<String> {
        env(self.key)
    }

    /// The key's value parsed, when set; one that does not parse is a
    /// `VALIDATION` error naming the key, the value and [`allowed`](Self::allowed).
    pub fn parse<T: std::str::FromStr>(&self) -> Result<Option<T>> {
        self.parse_from(&env)
    }

    /// As [`parse`](Self::parse), reading the value through `get`.
    pub fn parse_from<T: std::str::FromStr>(
        &self,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<T>> {
        get(self.key)
            .map(|v| v.trim().parse().map_err(|_| self.invalid(&v)))
            .transpose()
    }

    /// The key's value as seconds, when set: a number, not negative.
    pub fn seconds(&self) -> Result<Option<std::time::Duration>> {
        self.seconds_from(&env)
    }

    /// As [`seconds`](Self::seconds), reading the value through `get`.
    pub fn seconds_from(
        &self,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<std::time::Duration>> {
        self.parse_from::<f64>(get)?
            .map(|v| std::time::Duration::try_from_secs_f64(v).map_err(|_| self.invalid(v)))
            .transpose()
    }

    /// Check `lo <= value <= hi`; out of range is a `VALIDATION` error
    /// naming the key, the value and [`allowed`](Self::allowed).
    pub fn check<T: PartialOrd + std::fmt::Display>(&self, value: T, lo: T, hi: T) -> Result<()> {
        if value < lo || value > hi {
            return Err(self.invalid(value));
        }
        Ok(())
    }

    /// A `VALIDATION` error for `value`, naming the key and what is allowed.
    pub fn invalid(&self, value: impl std::fmt::Display) -> crate::Error {
        invalid(self.key, value, self.allowed)
    }
}

/// The keys the `herald` crate itself reads (the bus, the delivery settings
/// every store shares, retention, the memory store). The server and each
/// store crate keep their own table of the keys only they read.
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    KeySpec { key: "HERALD_SOURCE", default: "the executable's name", allowed: "1–1024 chars, no control characters", doc: "the publishing service's name, in every envelope" },
    KeySpec { key: "HERALD_ENVIRONMENT", default: DEFAULT_ENVIRONMENT, allowed: "[a-z0-9_-]+", doc: "namespaces streams and topics on shared brokers" },
    KeySpec { key: "HERALD_TIMEOUT_SECONDS", default: "30", allowed: "seconds, 1–300", doc: "publish and command call timeout" },
    KeySpec { key: "HERALD_MAX_PAYLOAD_BYTES", default: "1048576", allowed: "bytes, 1024–67108864", doc: "largest payload; exactly the limit passes" },
    KeySpec { key: "HERALD_MAX_HEADERS", default: "64", allowed: "0–1024 headers", doc: "most headers on one message" },
    KeySpec { key: "HERALD_MAX_HEADER_BYTES", default: "16384", allowed: "bytes, 0–1048576", doc: "most bytes of header names and values together" },
    KeySpec { key: "HERALD_SUBSCRIPTION_BUFFER", default: "1024", allowed: "events, 1–1000000", doc: "undelivered events a subscription buffers" },
    KeySpec { key: "HERALD_START_POSITION", default: "latest", allowed: "earliest, latest", doc: "where a new subscription starts" },
    KeySpec { key: "HERALD_ACK_WAIT", default: "30", allowed: "seconds, 1–3600", doc: "an unsettled delivery is redelivered after it" },
    KeySpec { key: "HERALD_HISTORY_SIZE", default: "1000", allowed: "events, 0–1000000", doc: "events the memory store keeps per topic" },
    KeySpec { key: "HERALD_MAX_DELIVER", default: "5", allowed: "attempts, 1–1000", doc: "delivery attempts before dead-lettering" },
    KeySpec { key: "HERALD_MAX_RETRY_ATTEMPTS", default: "3", allowed: "0–10", doc: "retries after the first attempt" },
    KeySpec { key: "HERALD_RETRY_BACKOFF_BASE", default: "1.0", allowed: "seconds, 0.001–60", doc: "the first retry's nominal delay" },
    KeySpec { key: "HERALD_RETRY_MAX_DELAY", default: "60", allowed: "seconds, >= the base, <= 3600", doc: "the longest retry delay" },
    KeySpec { key: "HERALD_CIRCUIT_BREAKER_THRESHOLD", default: "5", allowed: "1–100 failures in a row", doc: "consecutive retryable failures that open the breaker" },
    KeySpec { key: "HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT", default: "30", allowed: "seconds, 1–3600", doc: "how long an open breaker waits before a trial call" },
    KeySpec { key: "HERALD_DEDUPE_WINDOW", default: "120", allowed: "seconds, 0–604800 (7 days), or forever (SQLite, PostgreSQL)", doc: "how long an idempotency key is remembered; 0 is off" },
    KeySpec { key: "HERALD_STALL_AFTER", default: "60", allowed: "seconds, 1–3600", doc: "a group member holding work that long without settling any is stalled" },
    KeySpec { key: "HERALD_SCHEMAS", default: "enforce", allowed: "off, warn, enforce", doc: "what a publish does with an event its topic's registered schema refuses: refuse it (enforce), log it (warn), or check nothing (off)" },
    KeySpec { key: "HERALD_KEYLESS_PARTITION", default: "spread", allowed: "spread, topic", doc: "which partition NATS and Kafka put a keyless event in: spread (by id) or topic (one per topic, as a group ordered per_topic needs)" },
    KeySpec { key: "HERALD_DEAD_LETTERS", default: "<environment>.dead_letters", allowed: "a topic or stream name ([A-Za-z0-9._-], 1–249 chars), or off", doc: "where dead letters go (Kafka topic, NATS stream); off logs and counts them instead; the SQL stores take only off" },
    KeySpec { key: "HERALD_SETTLE_BATCH", default: "512", allowed: "settlements, 1–10000", doc: "most acks, nacks and terms a durable store commits in one transaction" },
    KeySpec { key: "HERALD_SETTLE_WINDOW", default: "0", allowed: "seconds, 0–0.1", doc: "how long a durable store waits for more settlements before it commits; 0 commits what is waiting at once" },
    KeySpec { key: "HERALD_POLL_INTERVAL", default: "0.5", allowed: "seconds, 0.01–10", doc: "how soon a store notices other processes' commits" },
    KeySpec { key: "HERALD_GROUP", default: "default", allowed: "1–255 chars, no control characters", doc: "the service's consumer group" },
    KeySpec { key: "HERALD_RETENTION_MAX_AGE", default: "keep all", allowed: "seconds, 1 – 100 years", doc: "events older than this are removed" },
    KeySpec { key: "HERALD_RETENTION_MAX_EVENTS", default: "keep all", allowed: "events, >= 1", doc: "most events kept per topic" },
];

/// The [`KeySpec`] of `key`, when it is one of [`KEYS`].
pub fn spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.key == key)
}

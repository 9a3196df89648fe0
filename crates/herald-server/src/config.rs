//! The server's settings, and `herald.toml`.
//!
//! Owns [`ServerConfig`] (listen address, store, tokens, TLS, connection,
//! subscription, rate and size limits, shutdown grace), its `HERALD_*` keys
//! and their validation (DESIGN.md §9), and [`load_file`], which reads a
//! `herald.toml` and installs it beneath the environment for every
//! component's `from_env` (`herald::config::set_file_values`). [`KEYS`]
//! is the table of the server's own keys and [`keys`] adds herald's and
//! the stores' tables: every key `herald serve` reads, so the file is
//! checked for typos and `herald serve --print-config` can show each
//! effective value and where it came from. Does not own the bus's or the
//! stores' settings (their own configs), only their listing.
//!
//! In the file, `key = value` at the top is `HERALD_KEY`, `[pg] schema = …`
//! is `HERALD_PG_SCHEMA`, and `[[tokens]]` tables are `HERALD_TOKENS` (in the
//! environment, the same list as JSON).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::config::{env, invalid, KeySpec};
use herald::Result;

use crate::auth::{Grant, Tokens};

/// Where `herald serve` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// The store `herald serve` opens by default: SQLite under `./herald-data`.
pub const DEFAULT_STORE: &str = "sqlite://herald-data/herald.db";
/// Default connection limit (`HERALD_MAX_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default subscriptions per WebSocket (`HERALD_MAX_SUBSCRIPTIONS`).
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 100;
/// Default requests per second per caller (`HERALD_RATE_LIMIT`; 0 is off).
pub const DEFAULT_RATE_LIMIT: u32 = 10_000;
/// Default events in one publish request (`HERALD_MAX_BATCH`).
pub const DEFAULT_MAX_BATCH: usize = 1_000;
/// Default request body limit (`HERALD_MAX_REQUEST_BYTES`).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Default frames queued for one WebSocket (`HERALD_WS_BUFFER`).
pub const DEFAULT_WS_BUFFER: usize = 1_024;
/// Default time a WebSocket may accept no frame before it is dropped
/// (`HERALD_WS_STALL_TIMEOUT`).
pub const DEFAULT_WS_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time in-flight work gets at shutdown (`HERALD_SHUTDOWN_TIMEOUT`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request's headers, from its first
/// byte (or from connecting), and between chunks of its body
/// (`HERALD_HEADER_READ_TIMEOUT`).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a keep-alive connection may sit idle between requests
/// (`HERALD_IDLE_TIMEOUT`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default connections one client address may hold at once
/// (`HERALD_MAX_CONNECTIONS_PER_CLIENT`).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Default bytes of outgoing frames queued for one WebSocket
/// (`HERALD_WS_BUFFER_BYTES`).
pub const DEFAULT_WS_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Default calls one WebSocket may have waiting at once
/// (`HERALD_WS_MAX_PENDING_CALLS`).
pub const DEFAULT_WS_MAX_PENDING_CALLS: usize = 256;

/// The keys only the server reads (see [`keys`] for every key `herald
/// serve` reads).
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    KeySpec { key: "HERALD_LISTEN", default: DEFAULT_LISTEN, allowed: "host:port; beyond loopback only with tokens", doc: "where the server listens" },
    KeySpec { key: "HERALD_TOKENS", default: "none", allowed: "[[tokens]] tables in the file; a JSON list in the environment", doc: "the API tokens and their grants" },
    KeySpec { key: "HERALD_TLS_CERT", default: "none", allowed: "a PEM certificate chain file (with HERALD_TLS_KEY)", doc: "serve HTTPS with this certificate" },
    KeySpec { key: "HERALD_TLS_KEY", default: "none", allowed: "a PEM private key file (with HERALD_TLS_CERT)", doc: "the certificate's private key" },
    KeySpec { key: "HERALD_ALLOWED_ORIGINS", default: "same origin only", allowed: "comma-separated scheme://host[:port]", doc: "origins browsers may call from" },
    KeySpec { key: "HERALD_ALLOWED_HOSTS", default: "loopback names and the listen address when open; any name with tokens", allowed: "comma-separated host names (no port)", doc: "names the Host header may carry" },
    KeySpec { key: "HERALD_MAX_CONNECTIONS", default: "10000", allowed: "1–1000000", doc: "open connections; more get 503 BACKPRESSURE" },
    KeySpec { key: "HERALD_MAX_CONNECTIONS_PER_CLIENT", default: "256", allowed: "1–1000000 per client address", doc: "connections one client address may hold" },
    KeySpec { key: "HERALD_HEADER_READ_TIMEOUT", default: "10 (s)", allowed: "seconds, 1–300", doc: "to send a request's headers, and between body chunks" },
    KeySpec { key: "HERALD_IDLE_TIMEOUT", default: "60 (s)", allowed: "seconds, 1–3600", doc: "a keep-alive connection idle, or a WebSocket silent, that long is closed" },
    KeySpec { key: "HERALD_MAX_SUBSCRIPTIONS", default: "100", allowed: "1–10000 per WebSocket", doc: "subscriptions (and handled commands) per WebSocket" },
    KeySpec { key: "HERALD_RATE_LIMIT", default: "10000", allowed: "0 (off)–1000000 requests/s", doc: "requests per second per token (per client address when open)" },
    KeySpec { key: "HERALD_MAX_BATCH", default: "1000", allowed: "1–100000 events", doc: "events in one publish request" },
    KeySpec { key: "HERALD_MAX_REQUEST_BYTES", default: "16777216", allowed: "bytes, 1024–1073741824", doc: "largest request body" },
    KeySpec { key: "HERALD_WS_BUFFER", default: "1024", allowed: "1–1000000 frames", doc: "frames queued per WebSocket" },
    KeySpec { key: "HERALD_WS_BUFFER_BYTES", default: "16777216", allowed: "bytes, 65536–1073741824", doc: "bytes of frames queued per WebSocket (and of unacked deliveries)" },
    KeySpec { key: "HERALD_WS_MAX_PENDING_CALLS", default: "256", allowed: "1–100000 calls", doc: "calls waiting per WebSocket; more get BACKPRESSURE" },
    KeySpec { key: "HERALD_WS_STALL_TIMEOUT", default: "30 (s)", allowed: "seconds, 1–3600", doc: "a WebSocket accepting no frame that long is closed" },
    KeySpec { key: "HERALD_SHUTDOWN_TIMEOUT", default: "30 (s)", allowed: "seconds, 1–3600", doc: "how long in-flight requests get at shutdown" },
];

/// The server's own key `name`.
fn spec(name: &str) -> &'static KeySpec {
    KEYS.iter()
        .find(|k| k.key == name)
        .expect("a key of the server's KEYS table")
}

fn parse_of<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    spec(name).parse()
}

fn seconds_of(name: &str) -> Result<Option<Duration>> {
    spec(name).seconds()
}

fn check<T: PartialOrd + std::fmt::Display>(name: &str, value: T, lo: T, hi: T) -> Result<()> {
    spec(name).check(value, lo, hi)
}

/// Every key `herald serve` reads: [`KEYS`], and herald's and the compiled
/// stores' ([`herald_store::keys`]).
pub fn keys() -> Vec<&'static KeySpec> {
    KEYS.iter().chain(herald_store::keys()).collect()
}

/// `herald serve`'s settings. Build in code or read with [`ServerConfig::from_env`]
/// (the environment over `herald.toml`, see [`load_file`]).
///
/// ```
/// use herald_server::ServerConfig;
/// let cfg = ServerConfig::default();
/// assert_eq!(cfg.listen.to_string(), "127.0.0.1:7070");
/// cfg.validate().unwrap();
/// let open_to_all = ServerConfig { listen: "0.0.0.0:7070".parse().unwrap(), ..ServerConfig::default() };
/// assert!(open_to_all.validate().unwrap_err().to_string().contains("HERALD_LISTEN"));
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The store URL.
    pub store: String,
    /// API tokens; none means open, loopback only.
    pub tokens: Tokens,
    /// TLS certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connections served at once; more are answered 503 `BACKPRESSURE`.
    pub max_connections: usize,
    /// Subscriptions one WebSocket may hold.
    pub max_subscriptions: usize,
    /// Requests per second per caller (token, or client address when
    /// open); 0 turns the limit off.
    pub rate_limit: u32,
    /// Events in one publish request.
    pub max_batch: usize,
    /// Bytes in one request body.
    pub max_request_bytes: usize,
    /// Frames queued for one WebSocket before its slow-client policy applies.
    pub ws_buffer: usize,
    /// How long a WebSocket may accept no frame before it is dropped (its
    /// unacked deliveries are redelivered).
    pub ws_stall_timeout: Duration,
    /// How long in-flight work gets to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Connections one client address may hold; more are answered 503.
    pub max_connections_per_client: usize,
    /// Time to send a request's headers (from connecting, or from the first
    /// byte after the previous response) and between chunks of its body.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Origins (`https://ops.example.com`) whose pages may call the server
    /// from a browser, besides the server's own origin.
    pub allowed_origins: Vec<String>,
    /// Host names the `Host` header may carry. Empty: the loopback names
    /// and the listen address on an open server, any name with tokens.
    pub allowed_hosts: Vec<String>,
    /// Bytes of outgoing frames queued for one WebSocket before its
    /// feeders wait (a frame larger than this still goes, alone).
    pub ws_buffer_bytes: usize,
    /// Calls one WebSocket may have waiting at once.
    pub ws_max_pending_calls: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            store: DEFAULT_STORE.into(),
            tokens: Tokens::default(),
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            rate_limit: DEFAULT_RATE_LIMIT,
            max_batch: DEFAULT_MAX_BATCH,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            ws_buffer: DEFAULT_WS_BUFFER,
            ws_stall_timeout: DEFAULT_WS_STALL_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            ws_buffer_bytes: DEFAULT_WS_BUFFER_BYTES,
            ws_max_pending_calls: DEFAULT_WS_MAX_PENDING_CALLS,
        }
    }
}

impl ServerConfig {
    /// Defaults overridden by the `HERALD_*` settings that are set, validated.
    pub fn from_env() -> Result<Self> {
        let mut c = ServerConfig::default();
        if let Some(v) = env("HERALD_LISTEN") {
            c.listen = v
                .parse()
                .map_err(|_| invalid("HERALD_LISTEN", &v, "host:port, e.g. 127.0.0.1:7070"))?;
        }
        if let Some(v) = env("HERALD_STORE") {
            c.store = v;
        }
        if let Some(v) = env("HERALD_TOKENS") {
            let grants: Vec<Grant> = serde_json::from_str(&v).map_err(|e| {
                invalid(
                    "HERALD_TOKENS",
                    "(not shown)",
                    &format!("a JSON list of tokens ({e})"),
                )
            })?;
            c.tokens = Tokens::new(grants)?;
        }
        match (env("HERALD_TLS_CERT"), env("HERALD_TLS_KEY")) {
            (Some(cert), Some(key)) => c.tls = Some((cert.into(), key.into())),
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "HERALD_TLS_KEY",
                    "unset",
                    "a PEM key file, since HERALD_TLS_CERT is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "HERALD_TLS_CERT",
                    "unset",
                    "a PEM certificate file, since HERALD_TLS_KEY is set",
                ))
            }
        }
        if let Some(v) = parse_of("HERALD_MAX_CONNECTIONS")? {
            c.max_connections = v;
        }
        if let Some(v) = parse_of("HERALD_MAX_SUBSCRIPTIONS")? {
            c.max_subscriptions = v;
        }
        if let Some(v) = parse_of("HERALD_RATE_LIMIT")? {
            c.rate_limit = v;
        }
        if let Some(v) = parse_of("HERALD_MAX_BATCH")? {
            c.max_batch = v;
        }
        if let Some(v) = parse_of("HERALD_MAX_REQUEST_BYTES")? {
            c.max_request_bytes = v;
        }
        if let Some(v) = parse_of("HERALD_WS_BUFFER")? {
            c.ws_buffer = v;
        }
        if let Some(v) = seconds_of("HERALD_WS_STALL_TIMEOUT")? {
            c.ws_stall_timeout = v;
        }
        if let Some(v) = seconds_of("HERALD_SHUTDOWN_TIMEOUT")? {
            c.shutdown_timeout = v;
        }
        if let Some(v) = parse_of("HERALD_MAX_CONNECTIONS_PER_CLIENT")? {
            c.max_connections_per_client = v;
        }
        if let Some(v) = seconds_of("HERALD_HEADER_READ_TIMEOUT")? {
            c.header_read_timeout = v;
        }
        if let Some(v) = seconds_of("HERALD_IDLE_TIMEOUT")? {
            c.idle_timeout = v;
        }
        if let Some(v) = env("HERALD_ALLOWED_ORIGINS") {
            c.allowed_origins = list(&v);
        }
        if let Some(v) = env("HERALD_ALLOWED_HOSTS") {
            c.allowed_hosts = list(&v);
        }
        if let Some(v) = parse_of("HERALD_WS_BUFFER_BYTES")? {
            c.ws_buffer_bytes = v;
        }
        if let Some(v) = parse_of("HERALD_WS_MAX_PENDING_CALLS")? {
            c.ws_max_pending_calls = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "HERALD_LISTEN",
                self.listen,
                "a loopback address while no tokens are configured (HERALD_TOKENS)",
            ));
        }
        check("HERALD_MAX_CONNECTIONS", self.max_connections, 1, 1_000_000)?;
        check(
            "HERALD_MAX_SUBSCRIPTIONS",
            self.max_subscriptions,
            1,
            10_000,
        )?;
        check("HERALD_RATE_LIMIT", self.rate_limit, 0, 1_000_000)?;
        check("HERALD_MAX_BATCH", self.max_batch, 1, 100_000)?;
        check(
            "HERALD_MAX_REQUEST_BYTES",
            self.max_request_bytes,
            1024,
            1 << 30,
        )?;
        check("HERALD_WS_BUFFER", self.ws_buffer, 1, 1_000_000)?;
        check(
            "HERALD_WS_STALL_TIMEOUT",
            self.ws_stall_timeout.as_secs_f64(),
            1.0,
            3600.0,
        )?;
        check(
            "HERALD_SHUTDOWN_TIMEOUT",
            self.shutdown_timeout.as_secs_f64(),
            1.0,
            3600.0,
        )?;
        check(
            "HERALD_MAX_CONNECTIONS_PER_CLIENT",
            self.max_connections_per_client,
            1,
            1_000_000,
        )?;
        check(
            "HERALD_HEADER_READ_TIMEOUT",
            self.header_read_timeout.as_secs_f64(),
            1.0,
            300.0,
        )?;
        check(
            "HERALD_IDLE_TIMEOUT",
            self.idle_timeout.as_secs_f64(),
            1.0,
            3600.0,
        )?;
        check(
            "HERALD_WS_BUFFER_BYTES",
            self.ws_buffer_bytes,
            64 * 1024,
            1 << 30,
        )?;
        check(
            "HERALD_WS_MAX_PENDING_CALLS",
            self.ws_max_pending_calls,
            1,
            100_000,
        )?;
        for origin in &self.allowed_origins {
            crate::origin::check_origin_setting(origin)?;
        }
        for host in &self.allowed_hosts {
            crate::origin::check_host_setting(host)?;
        }
        Ok(())
    }
}

/// A comma-separated setting's items, trimmed, empty ones dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Read `path` (TOML) and install its values beneath the environment, so
/// every `from_env` sees them ([`herald_store::file::load`] with every key
/// `herald serve` reads).
pub fn load_file(path: &Path) -> Result<()> {
    herald_store::file::load(path, &keys())
}

/// `herald.toml` text as `HERALD_*` keys and their values (see
/// [`herald_store::file::flatten`]).
pub fn flatten(text: &str) -> Result<Vec<(String, String)>> {
    herald_store::file::flatten(text, &keys())
}

/// Each key's effective value (secrets hidden) and its origin, one per
/// line, for `--print-config`.
pub fn describe() -> String {
    let mut out = String::new();
    for KeySpec {
        key,
        default,
        allowed,
        ..
    } in keys()
    {
        let origin = herald::config::origin(key);
        let value = match env(key) {
            None => default.to_string(),
            Some(_) if *key == "HERALD_TOKENS" || key.ends_with("PASSWORD") => {
                "(set, not shown)".to_owned()
            }
            Some(v) => herald::config::redact(&v),
        };
        out.push_str(&format!("{key}={value}  # {origin}; allowed: {allowed}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::ErrorCode;

    #[test]
    fn the_servers_own_keys_and_its_tokens_flatten_too() {
        let v = flatten(
            r#"
            max_connections = 5
            [[tokens]]
            name = "ci"
            sha256 = "00"
            publish = ["a.>"]
            "#,
        )
        .unwrap();
        let get = |k: &str| v.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("HERALD_MAX_CONNECTIONS").as_deref(), Some("5"));
        let tokens: Vec<Grant> = serde_json::from_str(&get("HERALD_TOKENS").unwrap()).unwrap();
        assert_eq!(tokens[0].publish, vec!["a.>".to_owned()]);
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_validation_errors() {
        let e = flatten("max_conections = 5").unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.to_string().contains("max_conections"), "{e}");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        for (c, key) in [
            (
                ServerConfig {
                    max_connections: 0,
                    ..Default::default()
                },
                "HERALD_MAX_CONNECTIONS",
            ),
            (
                ServerConfig {
                    max_batch: 0,
                    ..Default::default()
                },
                "HERALD_MAX_BATCH",
            ),
            (
                ServerConfig {
                    ws_buffer: 0,
                    ..Default::default()
                },
                "HERALD_WS_BUFFER",
            ),
            (
                ServerConfig {
                    max_request_bytes: 10,
                    ..Default::default()
                },
                "HERALD_MAX_REQUEST_BYTES",
            ),
            (
                ServerConfig {
                    shutdown_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "HERALD_SHUTDOWN_TIMEOUT",
            ),
            (
                ServerConfig {
                    header_read_timeout: Duration::from_secs(301),
                    ..Default::default()
                },
                "HERALD_HEADER_READ_TIMEOUT",
            ),
            (
                ServerConfig {
                    idle_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "HERALD_IDLE_TIMEOUT",
            ),
            (
                ServerConfig {
                    max_connections_per_client: 0,
                    ..Default::default()
                },
                "HERALD_MAX_CONNECTIONS_PER_CLIENT",
            ),
            (
                ServerConfig {
                    ws_buffer_bytes: 1024,
                    ..Default::default()
                },
                "HERALD_WS_BUFFER_BYTES",
            ),
            (
                ServerConfig {
                    ws_max_pending_calls: 0,
                    ..Default::default()
                },
                "HERALD_WS_MAX_PENDING_CALLS",
            ),
            (
                ServerConfig {
                    allowed_origins: vec!["https://ops.example.com/path".into()],
                    ..Default::default()
                },
                "HERALD_ALLOWED_ORIGINS",
            ),
            (
                ServerConfig {
                    allowed_hosts: vec!["bad host".into()],
                    ..Default::default()
                },
                "HERALD_ALLOWED_HOSTS",
            ),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}

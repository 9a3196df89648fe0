//! Opens the store that configuration names, so a service moves from the
//! embedded SQLite store to PostgreSQL, NATS JetStream or Kafka by changing
//! `HERALD_STORE` and nothing in its code.
//!
//! Owns the mapping from a store URL to a transport: `memory://`,
//! `sqlite://PATH` (the default, `sqlite://herald.db`), `postgres://…`,
//! `nats://…` and `kafka://HOST:PORT[,HOST:PORT…]` (the bootstrap servers,
//! unless `HERALD_KAFKA_BOOTSTRAP_SERVERS` names them). Each backend sits behind a cargo feature of the same name
//! (`sqlite` on by default), so a service compiles only the backends it can
//! be pointed at. Reads the delivery settings every store shares
//! ([`DeliveryConfig`]) once, for the bus and the store alike, and lists
//! every key a build reads ([`keys`]). Does not own any backend's
//! behaviour or its other settings: those are each store's config.
//!
//! ```no_run
//! # async fn run() -> herald::Result<()> {
//! use herald::Message;
//! // HERALD_STORE=sqlite://app.db today, HERALD_STORE=nats://10.0.0.5:4222 tomorrow
//! let bus = herald_store::bus_from_env().await?;
//! bus.publish(Message::json("orders.placed", &7u64)?).await?;
//! # Ok(()) }
//! ```

pub mod file;

use std::path::Path;
use std::sync::Arc;

use herald::config::{DeliveryConfig, KeySpec};
use herald::DynTransport;
use herald::{Bus, Config, Error, Result};

/// The key only this crate reads.
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    KeySpec { key: "HERALD_STORE", default: DEFAULT_STORE, allowed: "memory://, sqlite://PATH, postgres://…, nats://… (several comma-separated), kafka://HOST:PORT[,HOST:PORT…]", doc: "the store a service runs on" },
    KeySpec { key: file::CONFIG_FILE_KEY, default: "none", allowed: "a herald.toml path (environment only)", doc: "the configuration file bus_from_env and Store::from_env load" },
];

/// Every key a service built with these features reads: herald's own (the
/// bus and the delivery settings), [`KEYS`], and each compiled store's.
///
/// ```
/// assert!(herald_store::keys().iter().any(|k| k.key == "HERALD_DEDUPE_WINDOW"));
/// assert!(herald_store::keys().iter().any(|k| k.key == "HERALD_STORE"));
/// ```
pub fn keys() -> Vec<&'static KeySpec> {
    let stores: &[&[KeySpec]] = &[
        #[cfg(feature = "sqlite")]
        herald_sqlite::KEYS,
        #[cfg(feature = "postgres")]
        herald_postgres::KEYS,
        #[cfg(feature = "nats")]
        herald_nats::KEYS,
        #[cfg(feature = "kafka")]
        herald_kafka::KEYS,
    ];
    herald::config::KEYS
        .iter()
        .chain(KEYS)
        .chain(stores.iter().flat_map(|k| k.iter()))
        .collect()
}

/// The store a service runs on, opened from a URL. Each variant is the
/// backend's own handle, for what only that backend has (the SQLite and
/// PostgreSQL outboxes, say).
#[derive(Clone)]
#[non_exhaustive]
pub enum Store {
    /// `memory://`: in this process only.
    Memory(herald::memory::MemoryTransport),
    /// `sqlite://PATH`: the embedded durable store.
    #[cfg(feature = "sqlite")]
    Sqlite(herald_sqlite::SqliteStore),
    /// `postgres://…`: PostgreSQL with its transactional outbox.
    #[cfg(feature = "postgres")]
    Postgres(herald_postgres::PgStore),
    /// `nats://…`: NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(herald_nats::NatsStore),
    /// `kafka://…`: Kafka (any Kafka-protocol broker).
    #[cfg(feature = "kafka")]
    Kafka(herald_kafka::KafkaStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Store").field(&self.kind()).finish()
    }
}

/// What `HERALD_STORE` means when it is not set.
pub const DEFAULT_STORE: &str = "sqlite://herald.db";

impl Store {
    /// Open the store `HERALD_STORE` names (default [`DEFAULT_STORE`]),
    /// with that backend's other settings from its `HERALD_*` keys
    /// ([`StoreConfig::from_env`]).
    ///
    /// An unknown scheme, or one whose feature is off, is a `VALIDATION`
    /// error naming `HERALD_STORE`.
    pub async fn from_env() -> Result<Store> {
        load_named_file()?;
        Store::open_config(StoreConfig::from_env()?).await
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub async fn from_env_with(delivery: DeliveryConfig) -> Result<Store> {
        Store::open_config(StoreConfig::from_env_with(delivery)?).await
    }

    /// Open the store `config` describes.
    pub async fn open_config(config: StoreConfig) -> Result<Store> {
        match config {
            StoreConfig::Memory(c) => Ok(Store::Memory(herald::memory::MemoryTransport::new(c)?)),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => Ok(Store::Sqlite(herald_sqlite::SqliteStore::open(c).await?)),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(c) => {
                Ok(Store::Postgres(herald_postgres::PgStore::open(c).await?))
            }
            #[cfg(feature = "nats")]
            StoreConfig::Nats(c) => Ok(Store::Nats(herald_nats::NatsStore::open(c).await?)),
            #[cfg(feature = "kafka")]
            StoreConfig::Kafka(c) => Ok(Store::Kafka(herald_kafka::KafkaStore::open(c).await?)),
        }
    }

    /// Open the store at `url` with every other setting at its default.
    /// The URL may carry the store's namespace: `postgres://…?schema=orders`,
    /// `nats://…?prefix=orders`, `kafka://…?environment=orders`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let store = herald_store::Store::open("memory://").await?;
    /// assert_eq!(store.kind(), "memory");
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with(url, StoreOptions::default()).await
    }

    /// Open the store at `url` with `options`; see [`StoreConfig::from_url`].
    pub async fn open_with(url: &str, options: StoreOptions) -> Result<Store> {
        Store::open_config(StoreConfig::from_url(url, options)?).await
    }

    /// The backend's name: `memory`, `sqlite`, `postgres`, `nats` or `kafka`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => "postgres",
            #[cfg(feature = "nats")]
            Store::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            Store::Kafka(_) => "kafka",
        }
    }

    /// The store as a transport, for [`Bus::new`] or
    /// [`BusBuilder::transport`](herald::BusBuilder::transport).
    pub fn transport(&self) -> Arc<dyn DynTransport> {
        match self {
            Store::Memory(t) => Arc::new(t.clone()),
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => Arc::new(s.clone()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.clone()),
            #[cfg(feature = "nats")]
            Store::Nats(s) => Arc::new(s.clone()),
            #[cfg(feature = "kafka")]
            Store::Kafka(s) => Arc::new(s.clone()),
        }
    }

    /// A bus with `config` on this store. Publishing to a store outside
    /// the process goes through DESIGN.md §6's guard, as `config`'s
    /// delivery settings give it: transient failures (`UNAVAILABLE`,
    /// `TIMEOUT`) are retried by their retry policy, and a circuit breaker
    /// fails publishes fast with `UNAVAILABLE` once their threshold failed
    /// in a row. The in-process store publishes unguarded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let store = herald_store::Store::open("memory://").await?;
    /// let bus = store.bus(herald::Config::default())?;
    /// bus.publish(herald::Message::json("orders.placed", &7u64)?).await?;
    /// # Ok(()) }
    /// ```
    pub fn bus(&self, config: Config) -> Result<Bus> {
        let delivery = config.delivery_config().clone();
        let builder = Bus::builder().config(config).transport(self.transport());
        match self {
            Store::Memory(_) => builder.build(),
            #[allow(unreachable_patterns)]
            _ => builder
                .publish_retry(delivery.retry_policy())
                .publish_breaker(herald::breaker::CircuitBreaker::from_config(&delivery)?)
                .build(),
        }
    }

    /// Close the store: later publishes fail with `UNAVAILABLE`, open
    /// subscriptions end. Idempotent.
    pub async fn close(&self) -> Result<()> {
        self.transport().close().await
    }
}

/// The settings of the store `HERALD_STORE` names, read and validated but
/// not opened: what `herald config` checks, and what [`Store::open_config`]
/// opens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// `memory://` ([`MemoryConfig::from_env`](herald::memory::MemoryConfig::from_env)).
    Memory(herald::memory::MemoryConfig),
    /// `sqlite://PATH`.
    #[cfg(feature = "sqlite")]
    Sqlite(herald_sqlite::SqliteConfig),
    /// `postgres://…`.
    #[cfg(feature = "postgres")]
    Postgres(herald_postgres::PgConfig),
    /// `nats://…`.
    #[cfg(feature = "nats")]
    Nats(herald_nats::NatsConfig),
    /// `kafka://…`.
    #[cfg(feature = "kafka")]
    Kafka(herald_kafka::KafkaConfig),
}

impl StoreConfig {
    /// The settings of the store at `url`, the rest at their defaults
    /// (not the environment's), validated, without connecting. The
    /// namespace comes from `options`, else from the URL's own parameter:
    /// a PostgreSQL schema (`?schema=`), a NATS subject prefix (`?prefix=`),
    /// a Kafka environment (`?environment=`, its topics' prefix). The
    /// memory and SQLite stores have none (a SQLite store is its file), so
    /// a namespace for them is a `VALIDATION` error.
    ///
    /// ```
    /// use herald_store::{StoreConfig, StoreOptions};
    /// let StoreConfig::Postgres(pg) = StoreConfig::from_url("postgres://h/db?schema=orders", StoreOptions::default()).unwrap() else { panic!() };
    /// assert_eq!(pg.schema_name(), "orders");
    /// let StoreConfig::Nats(nats) = StoreConfig::from_url("nats://h:4222", StoreOptions::default().namespace("billing")).unwrap() else { panic!() };
    /// assert_eq!(nats.subject_prefix(), "billing");
    /// ```
    pub fn from_url(url: &str, options: StoreOptions) -> Result<StoreConfig> {
        let StoreOptions {
            namespace,
            delivery,
        } = options;
        let delivery = delivery.unwrap_or_default();
        let none_for = |store: &str| match &namespace {
            Some(ns) => Err(herald::config::invalid(
                "namespace",
                ns,
                &format!("none: a {store} store has no namespace"),
            )),
            None => Ok(()),
        };
        let config = match scheme(url)? {
            "memory" => {
                none_for("memory")?;
                StoreConfig::Memory(herald::memory::MemoryConfig::default().delivery(delivery))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                none_for("SQLite")?;
                let path = url.strip_prefix("sqlite://").unwrap_or_default();
                StoreConfig::Sqlite(herald_sqlite::SqliteConfig::new(path).delivery(delivery))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let mut c = herald_postgres::PgConfig::new(url).delivery(delivery);
                if let Some(ns) = namespace {
                    c = c.schema(ns);
                }
                StoreConfig::Postgres(c)
            }
            #[cfg(feature = "nats")]
            "nats" | "tls" | "ws" | "wss" => {
                let mut c = herald_nats::NatsConfig::new(url).delivery(delivery);
                if let Some(ns) = namespace {
                    c = c.prefix(ns);
                }
                StoreConfig::Nats(c)
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let (servers, environment) = kafka_servers(url);
                let mut c = herald_kafka::KafkaConfig::new(servers).delivery(delivery);
                if let Some(ns) = namespace.or(environment) {
                    c = c.environment(ns);
                }
                StoreConfig::Kafka(c)
            }
            other => return Err(unsupported(url, other)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Check every setting against its allowed range.
    pub fn validate(&self) -> Result<()> {
        match self {
            StoreConfig::Memory(c) => c.validate(),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => c.validate(),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(c) => c.validate(),
            #[cfg(feature = "nats")]
            StoreConfig::Nats(c) => c.validate(),
            #[cfg(feature = "kafka")]
            StoreConfig::Kafka(c) => c.validate(),
        }
    }

    /// Read the settings of the store `HERALD_STORE` names (default
    /// [`DEFAULT_STORE`]) from its `HERALD_*` keys and validate them,
    /// without connecting to anything. A bad value is a `VALIDATION` error
    /// naming its key, the value and what is allowed.
    pub fn from_env() -> Result<StoreConfig> {
        StoreConfig::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings every
    /// store shares already read (see [`bus_from_env`], which reads them
    /// once for the bus and the store).
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<StoreConfig> {
        let url = herald::config::env("HERALD_STORE").unwrap_or_else(|| DEFAULT_STORE.to_owned());
        match scheme(&url)? {
            "memory" => Ok(StoreConfig::Memory(
                herald::memory::MemoryConfig::from_env_with(delivery)?,
            )),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(StoreConfig::Sqlite(
                herald_sqlite::SqliteConfig::from_env_with(delivery)?,
            )),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(StoreConfig::Postgres(
                herald_postgres::PgConfig::from_env_with(delivery)?,
            )),
            #[cfg(feature = "nats")]
            "nats" | "tls" | "ws" | "wss" => Ok(StoreConfig::Nats(
                herald_nats::NatsConfig::from_env_with(delivery)?,
            )),
            #[cfg(feature = "kafka")]
            "kafka" => {
                let (servers, environment) = kafka_servers(&url);
                let lookup = move |key: &str| match key {
                    "HERALD_ENVIRONMENT" if environment.is_some() => environment.clone(),
                    _ => herald::config::env(key).or_else(|| {
                        (key == "HERALD_KAFKA_BOOTSTRAP_SERVERS" && !servers.is_empty())
                            .then(|| servers.clone())
                    }),
                };
                let config = herald_kafka::KafkaConfig::from_lookup_with(&lookup, delivery)?;
                Ok(StoreConfig::Kafka(config))
            }
            other => Err(unsupported(&url, other)),
        }
    }
}

/// What [`Store::open_with`] is given beyond a URL.
///
/// ```
/// use herald_store::StoreOptions;
/// use herald::config::DeliveryConfig;
/// let options = StoreOptions::default()
///     .namespace("orders")
///     .delivery(DeliveryConfig::default().max_deliver(3));
/// # drop(options);
/// ```
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    namespace: Option<String>,
    delivery: Option<DeliveryConfig>,
}

impl StoreOptions {
    /// The store's namespace: a PostgreSQL schema, a NATS subject prefix, a
    /// Kafka environment (over the URL's parameter).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The delivery settings every store shares (default:
    /// [`DeliveryConfig::default`]).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = Some(delivery);
        self
    }
}

/// A bus with [`Config::from_env`] on the store `HERALD_STORE` names: the
/// one line a service needs to run on whichever store it is configured for.
/// When `HERALD_CONFIG` names a `herald.toml` (and no file is loaded yet),
/// its values sit beneath the environment's, as [`bus_from_config`] loads
/// them.
pub async fn bus_from_env() -> Result<Bus> {
    load_named_file()?;
    let delivery = DeliveryConfig::from_env()?;
    let config = Config::from_env_with(delivery.clone())?;
    Store::from_env_with(delivery).await?.bus(config)
}

/// [`bus_from_env`] with the settings of the `herald.toml` at `path`
/// beneath the environment's: code over environment over file over
/// defaults, each value's origin shown by [`herald::config::origin`] and
/// `herald config`. A key the file names that no part of this build reads
/// is a `VALIDATION` error.
///
/// ```no_run
/// # async fn run() -> herald::Result<()> {
/// let bus = herald_store::bus_from_config("herald.toml").await?;
/// # drop(bus); Ok(()) }
/// ```
pub async fn bus_from_config(path: impl AsRef<Path>) -> Result<Bus> {
    file::load(path.as_ref(), &keys())?;
    bus_from_env().await
}

/// Load the file `HERALD_CONFIG` names, unless a file is loaded already.
fn load_named_file() -> Result<()> {
    let Ok(path) = std::env::var(file::CONFIG_FILE_KEY) else {
        return Ok(());
    };
    if path.is_empty() || herald::config::file_path().is_some() {
        return Ok(());
    }
    file::load(Path::new(&path), &keys())
}

fn scheme(url: &str) -> Result<&str> {
    match url.split_once(':') {
        Some((scheme, _)) if !scheme.is_empty() => Ok(scheme),
        _ => Err(herald::config::invalid(
            "HERALD_STORE",
            url,
            "a store URL: memory://, sqlite://PATH, postgres://…, nats://… or kafka://…",
        )),
    }
}

fn unsupported(url: &str, scheme: &str) -> Error {
    let known = [
        "sqlite",
        "postgres",
        "postgresql",
        "nats",
        "tls",
        "ws",
        "wss",
        "kafka",
    ];
    let allowed = if known.contains(&scheme) {
        format!(
            "a store this build has; `{scheme}` needs herald-store's `{}` feature",
            feature_of(scheme)
        )
    } else {
        "memory://, sqlite://PATH, postgres://…, nats://… or kafka://…".to_owned()
    };
    herald::config::invalid("HERALD_STORE", url, &allowed)
}

fn feature_of(scheme: &str) -> &'static str {
    match scheme {
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "kafka" => "kafka",
        _ => "nats",
    }
}

/// The bootstrap servers of a `kafka://HOST:PORT[,HOST:PORT…]` URL.
#[cfg(feature = "kafka")]
/// The bootstrap servers of a `kafka://` URL, and its `environment`
/// parameter (the namespace of its Kafka topics).
fn kafka_servers(url: &str) -> (String, Option<String>) {
    let (url, environment) = herald::config::take_url_param(url, "environment");
    let servers = url
        .strip_prefix("kafka://")
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned();
    (servers, environment)
}

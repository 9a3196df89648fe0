//! Opens the store that configuration names, so a service moves from the
//! embedded SQLite store to PostgreSQL, NATS JetStream or Kafka by changing
//! `HERALD_STORE` and nothing in its code.
//!
//! Owns the mapping from a store URL to a transport: `memory://`,
//! `sqlite://PATH` (the default, `sqlite://herald.db`), `postgres://…`,
//! `nats://…` and `kafka://HOST:PORT[,HOST:PORT…]` (the bootstrap servers,
//! unless `HERALD_KAFKA_BOOTSTRAP_SERVERS` names them). Each backend sits behind a cargo feature of the same name
//! (`sqlite` on by default), so a service compiles only the backends it can
//! be pointed at. Does not own any backend's behaviour or its other
//! settings: those are each store's `Config::from_env`.
//!
//! ```no_run
//! # async fn run() -> herald::Result<()> {
//! use herald::Message;
//! // HERALD_STORE=sqlite://app.db today, HERALD_STORE=nats://10.0.0.5:4222 tomorrow
//! let bus = herald_store::bus_from_env().await?;
//! bus.publish(Message::json("orders.placed", &7u64)?).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use herald::transport::Transport;
use herald::{Bus, Config, Error, Result};

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
    /// with that backend's other settings from its `HERALD_*` keys.
    ///
    /// An unknown scheme, or one whose feature is off, is a `VALIDATION`
    /// error naming `HERALD_STORE`.
    pub async fn from_env() -> Result<Store> {
        let url = herald::config::env("HERALD_STORE").unwrap_or_else(|| DEFAULT_STORE.to_owned());
        match scheme(&url)? {
            "memory" => Ok(Store::Memory(Default::default())),
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let config = herald_sqlite::SqliteConfig::from_env()?;
                Ok(Store::Sqlite(
                    herald_sqlite::SqliteStore::open(config).await?,
                ))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let config = herald_postgres::PgConfig::from_env()?;
                Ok(Store::Postgres(
                    herald_postgres::PgStore::open(config).await?,
                ))
            }
            #[cfg(feature = "nats")]
            "nats" | "tls" | "ws" | "wss" => {
                let config = herald_nats::NatsConfig::from_env()?;
                Ok(Store::Nats(herald_nats::NatsStore::open(config).await?))
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let servers = kafka_servers(&url).to_owned();
                let config = herald_kafka::KafkaConfig::from_lookup(|key| {
                    herald::config::env(key).or_else(|| {
                        (key == "HERALD_KAFKA_BOOTSTRAP_SERVERS" && !servers.is_empty())
                            .then(|| servers.clone())
                    })
                })?;
                Ok(Store::Kafka(herald_kafka::KafkaStore::open(config).await?))
            }
            other => Err(unsupported(&url, other)),
        }
    }

    /// Open the store at `url` with every other setting at its default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let store = herald_store::Store::open("memory://").await?;
    /// assert_eq!(store.kind(), "memory");
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<Store> {
        match scheme(url)? {
            "memory" => Ok(Store::Memory(Default::default())),
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let path = url.strip_prefix("sqlite://").unwrap_or_default();
                let config = herald_sqlite::SqliteConfig::new(path);
                config.validate()?;
                Ok(Store::Sqlite(
                    herald_sqlite::SqliteStore::open(config).await?,
                ))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let config = herald_postgres::PgConfig::new(url);
                Ok(Store::Postgres(
                    herald_postgres::PgStore::open(config).await?,
                ))
            }
            #[cfg(feature = "nats")]
            "nats" | "tls" | "ws" | "wss" => {
                let config = herald_nats::NatsConfig::new(url);
                Ok(Store::Nats(herald_nats::NatsStore::open(config).await?))
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config = herald_kafka::KafkaConfig::new(kafka_servers(url));
                Ok(Store::Kafka(herald_kafka::KafkaStore::open(config).await?))
            }
            other => Err(unsupported(url, other)),
        }
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
    pub fn transport(&self) -> Arc<dyn Transport> {
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
    /// the process goes through DESIGN.md §6's guard: transient failures
    /// (`UNAVAILABLE`, `TIMEOUT`) are retried by
    /// [`RetryPolicy::from_env`](herald::retry::RetryPolicy::from_env), and
    /// [`CircuitBreaker::from_env`](herald::breaker::CircuitBreaker::from_env)
    /// fails publishes fast with `UNAVAILABLE` once that many failed in a
    /// row. The in-process store publishes unguarded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let store = herald_store::Store::open("memory://").await?;
    /// let bus = store.bus(herald::Config::default())?;
    /// bus.publish(herald::Message::json("orders.placed", &7u64)?).await?;
    /// # Ok(()) }
    /// ```
    pub fn bus(&self, config: Config) -> Result<Bus> {
        let builder = Bus::builder().config(config).transport(self.transport());
        match self {
            Store::Memory(_) => builder.build(),
            #[allow(unreachable_patterns)]
            _ => builder
                .publish_retry(herald::retry::RetryPolicy::from_env()?)
                .publish_breaker(herald::breaker::CircuitBreaker::from_env()?)
                .build(),
        }
    }

    /// Close the store: later publishes fail with `UNAVAILABLE`, open
    /// subscriptions end. Idempotent.
    pub async fn close(&self) -> Result<()> {
        self.transport().close().await
    }
}

/// A bus with [`Config::from_env`] on the store `HERALD_STORE` names: the
/// one line a service needs to run on whichever store it is configured for.
pub async fn bus_from_env() -> Result<Bus> {
    let config = Config::from_env()?;
    Store::from_env().await?.bus(config)
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
fn kafka_servers(url: &str) -> &str {
    url.strip_prefix("kafka://")
        .unwrap_or("")
        .trim_end_matches('/')
}

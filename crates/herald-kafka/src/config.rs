//! The Kafka transport's settings: where the brokers are, producer and
//! consumer behaviour, TLS and SASL, and herald's shared knobs.
//!
//! Owns [`KafkaConfig`], its defaults, the `HERALD_*` keys only it reads
//! ([`KEYS`]; the delivery settings every store shares come in one
//! [`DeliveryConfig`], read once), the range checks (each bad value is a `VALIDATION` error naming key, value
//! and range) and [`KafkaConfig::producer_properties`] /
//! [`KafkaConfig::consumer_properties`], the librdkafka settings the
//! config becomes. Does not own connecting (that is the store's).

use std::collections::BTreeMap;
use std::time::Duration;

use herald::config::{invalid, DeliveryConfig, KeySpec};
pub use herald::config::{DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_TIMEOUT};
use herald::Result;

/// Brokers when nothing says otherwise (`HERALD_KAFKA_BOOTSTRAP_SERVERS`).
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "localhost:9092";
/// How long a producer waits to fill a batch (`HERALD_KAFKA_LINGER_MS`).
pub const DEFAULT_LINGER_MS: u32 = 5;
/// How long the brokers wait for a silent group member before they give
/// its partitions to the others (`HERALD_KAFKA_SESSION_TIMEOUT_MS`; Kafka's
/// and librdkafka's default).
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 45_000;
/// Most records the producer puts in one batch (`HERALD_KAFKA_BATCH_MESSAGES`,
/// librdkafka's `batch.num.messages`).
pub const DEFAULT_BATCH_MESSAGES: u32 = 10_000;
/// Partitions of the topics herald creates (`HERALD_KAFKA_PARTITIONS`).
pub const DEFAULT_PARTITIONS: u32 = 3;
/// The consumer group when none is named (`HERALD_GROUP`).
pub const DEFAULT_GROUP: &str = "default";
/// The largest payload herald sends (`HERALD_MAX_PAYLOAD_BYTES`): the
/// producer's `message.max.bytes` leaves room for the headers beside it.
pub const DEFAULT_MAX_PAYLOAD: usize = herald::config::DEFAULT_MAX_PAYLOAD_BYTES;

/// The keys only the Kafka store reads (the shared ones are
/// [`herald::config::KEYS`]).
#[rustfmt::skip]
pub const KEYS: &[KeySpec] = &[
    BOOTSTRAP_SERVERS, ACKS, IDEMPOTENCE, OFFSET_RESET, AUTO_COMMIT, COMPRESSION, LINGER_MS,
    SESSION_TIMEOUT_MS, BATCH_MESSAGES, PARTITIONS, REPLICATION_FACTOR, MIN_INSYNC_REPLICAS,
    KeySpec { key: "HERALD_KAFKA_SECURITY_PROTOCOL", default: "none", allowed: "plaintext, ssl, sasl_plaintext, sasl_ssl", doc: "librdkafka's security.protocol" },
    KeySpec { key: "HERALD_KAFKA_SSL_CA_LOCATION", default: "none", allowed: "a PEM file", doc: "librdkafka's ssl.ca.location" },
    KeySpec { key: "HERALD_KAFKA_SSL_CERTIFICATE_LOCATION", default: "none", allowed: "a PEM file", doc: "librdkafka's ssl.certificate.location" },
    KeySpec { key: "HERALD_KAFKA_SSL_KEY_LOCATION", default: "none", allowed: "a PEM file", doc: "librdkafka's ssl.key.location" },
    KeySpec { key: "HERALD_KAFKA_SSL_KEY_PASSWORD", default: "none", allowed: "text", doc: "librdkafka's ssl.key.password" },
    KeySpec { key: "HERALD_KAFKA_SASL_MECHANISM", default: "none", allowed: "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, OAUTHBEARER", doc: "librdkafka's sasl.mechanism" },
    KeySpec { key: "HERALD_KAFKA_SASL_USERNAME", default: "none", allowed: "text", doc: "librdkafka's sasl.username" },
    KeySpec { key: "HERALD_KAFKA_SASL_PASSWORD", default: "none", allowed: "text", doc: "librdkafka's sasl.password" },
];

#[rustfmt::skip]
const BOOTSTRAP_SERVERS: KeySpec = KeySpec { key: "HERALD_KAFKA_BOOTSTRAP_SERVERS", default: "from kafka://…, else localhost:9092", allowed: "comma-separated host:port", doc: "the brokers to start from" };
#[rustfmt::skip]
const ACKS: KeySpec = KeySpec { key: "HERALD_KAFKA_ACKS", default: "all", allowed: "all, 1, 0", doc: "the acknowledgement a publish waits for" };
#[rustfmt::skip]
const IDEMPOTENCE: KeySpec = KeySpec { key: "HERALD_KAFKA_ENABLE_IDEMPOTENCE", default: "true", allowed: "true, false", doc: "the idempotent producer (needs acks all)" };
#[rustfmt::skip]
const OFFSET_RESET: KeySpec = KeySpec { key: "HERALD_KAFKA_AUTO_OFFSET_RESET", default: "latest", allowed: "earliest, latest", doc: "where a new consumer group starts" };
#[rustfmt::skip]
const AUTO_COMMIT: KeySpec = KeySpec { key: "HERALD_KAFKA_ENABLE_AUTO_COMMIT", default: "false", allowed: "true, false", doc: "commit offsets in the background instead of after each ack" };
#[rustfmt::skip]
const COMPRESSION: KeySpec = KeySpec { key: "HERALD_KAFKA_COMPRESSION", default: "none", allowed: "none, gzip, snappy, lz4, zstd", doc: "producer compression" };
#[rustfmt::skip]
const LINGER_MS: KeySpec = KeySpec { key: "HERALD_KAFKA_LINGER_MS", default: "5", allowed: "0–1000", doc: "how long the producer waits to fill a batch, ms" };
#[rustfmt::skip]
const SESSION_TIMEOUT_MS: KeySpec = KeySpec { key: "HERALD_KAFKA_SESSION_TIMEOUT_MS", default: "45000", allowed: "1000–3600000", doc: "how long a crashed group member keeps its partitions, ms" };
#[rustfmt::skip]
const BATCH_MESSAGES: KeySpec = KeySpec { key: "HERALD_KAFKA_BATCH_MESSAGES", default: "10000", allowed: "1–1000000", doc: "records per producer batch (1 for tansu 0.6)" };
#[rustfmt::skip]
const PARTITIONS: KeySpec = KeySpec { key: "HERALD_KAFKA_PARTITIONS", default: "3", allowed: "1–10000", doc: "partitions of the topics herald creates" };
#[rustfmt::skip]
const REPLICATION_FACTOR: KeySpec = KeySpec { key: "HERALD_KAFKA_REPLICATION_FACTOR", default: "the brokers' default.replication.factor", allowed: "1–1000", doc: "replicas of each partition of the topics herald creates" };
#[rustfmt::skip]
const MIN_INSYNC_REPLICAS: KeySpec = KeySpec { key: "HERALD_KAFKA_MIN_INSYNC_REPLICAS", default: "the brokers' min.insync.replicas", allowed: "1–1000, at most the replication factor", doc: "min.insync.replicas of the topics herald creates: the replicas an acks=all publish waits for" };

/// Which acknowledgement a publish waits for (`HERALD_KAFKA_ACKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Every in-sync replica has it (the default; the only durable choice).
    #[default]
    All,
    /// The partition leader has it: lost if the leader dies before replicating.
    Leader,
    /// Nothing: a publish may be lost without an error.
    None,
}

impl Acks {
    fn property(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Where a new consumer group starts (`HERALD_KAFKA_AUTO_OFFSET_RESET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// At the oldest retained event.
    Earliest,
    /// After the newest event (the default).
    #[default]
    Latest,
}

/// Producer compression (`HERALD_KAFKA_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// None (the default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn property(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Where Kafka is and how herald uses it.
///
/// ```
/// use herald_kafka::{Acks, KafkaConfig};
/// let config = KafkaConfig::new("k1:9092,k2:9092").acks(Acks::All).partitions(6);
/// config.validate().unwrap();
/// assert_eq!(config.producer_properties()["enable.idempotence"], "true");
/// let bad = KafkaConfig::new("k1:9092").linger_ms(5000).validate().unwrap_err();
/// assert!(bad.to_string().contains("HERALD_KAFKA_LINGER_MS"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    bootstrap_servers: String,
    acks: Acks,
    idempotence: bool,
    offset_reset: OffsetReset,
    auto_commit: bool,
    compression: Compression,
    linger_ms: u32,
    session_timeout_ms: u32,
    batch_messages: u32,
    partitions: u32,
    replication_factor: Option<u32>,
    min_insync_replicas: Option<u32>,
    environment: String,
    delivery: DeliveryConfig,
    /// TLS and SASL settings passed through to librdkafka, by property name.
    security: BTreeMap<String, String>,
}

/// The TLS and SASL keys passed through: (`HERALD_*` key, librdkafka property).
pub const SECURITY_KEYS: &[(&str, &str)] = &[
    ("HERALD_KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("HERALD_KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    (
        "HERALD_KAFKA_SSL_CERTIFICATE_LOCATION",
        "ssl.certificate.location",
    ),
    ("HERALD_KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ("HERALD_KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
    ("HERALD_KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("HERALD_KAFKA_SASL_USERNAME", "sasl.username"),
    ("HERALD_KAFKA_SASL_PASSWORD", "sasl.password"),
];

impl KafkaConfig {
    /// Brokers at `bootstrap_servers` (comma-separated `host:port`) with
    /// every other setting at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            acks: Acks::All,
            idempotence: true,
            offset_reset: OffsetReset::Latest,
            auto_commit: false,
            compression: Compression::None,
            linger_ms: DEFAULT_LINGER_MS,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            batch_messages: DEFAULT_BATCH_MESSAGES,
            partitions: DEFAULT_PARTITIONS,
            replication_factor: None,
            min_insync_replicas: None,
            environment: herald::config::DEFAULT_ENVIRONMENT.to_owned(),
            delivery: DeliveryConfig::default(),
            security: BTreeMap::new(),
        }
    }

    /// The `HERALD_KAFKA_*` keys, `HERALD_ENVIRONMENT` and the delivery
    /// settings ([`DeliveryConfig::from_env`]: the group, timeout, attempts,
    /// dedupe window and payload limit) from the configuration (environment
    /// over `herald.toml`), validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        Self::from_lookup_with(&herald::config::env, delivery)
    }

    /// As [`from_env`](Self::from_env), reading each key through `get`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Self::from_lookup_with(get, DeliveryConfig::from_lookup(get)?)
    }

    /// As [`from_lookup`](Self::from_lookup), with the delivery settings
    /// already read.
    pub fn from_lookup_with(
        get: &dyn Fn(&str) -> Option<String>,
        delivery: DeliveryConfig,
    ) -> Result<Self> {
        let mut c = KafkaConfig::new(
            get(BOOTSTRAP_SERVERS.key).unwrap_or_else(|| DEFAULT_BOOTSTRAP_SERVERS.into()),
        );
        c.delivery = delivery;
        let choice = |spec: &KeySpec, options: &[&str]| -> Result<Option<usize>> {
            match get(spec.key) {
                None => Ok(None),
                Some(v) => options
                    .iter()
                    .position(|o| o.eq_ignore_ascii_case(v.trim()))
                    .map(Some)
                    .ok_or_else(|| spec.invalid(&v)),
            }
        };
        if let Some(i) = choice(&ACKS, &["all", "1", "0"])? {
            c.acks = [Acks::All, Acks::Leader, Acks::None][i];
        }
        let flag = |spec: &KeySpec| choice(spec, &["true", "false"]);
        if let Some(i) = flag(&IDEMPOTENCE)? {
            c.idempotence = i == 0;
        }
        if let Some(i) = flag(&AUTO_COMMIT)? {
            c.auto_commit = i == 0;
        }
        if let Some(i) = choice(&OFFSET_RESET, &["earliest", "latest"])? {
            c.offset_reset = [OffsetReset::Earliest, OffsetReset::Latest][i];
        }
        let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
        if let Some(i) = choice(&COMPRESSION, &codecs)? {
            c.compression = [
                Compression::None,
                Compression::Gzip,
                Compression::Snappy,
                Compression::Lz4,
                Compression::Zstd,
            ][i];
        }
        if let Some(v) = LINGER_MS.parse_from(get)? {
            c.linger_ms = v;
        }
        if let Some(v) = SESSION_TIMEOUT_MS.parse_from(get)? {
            c.session_timeout_ms = v;
        }
        if let Some(v) = BATCH_MESSAGES.parse_from(get)? {
            c.batch_messages = v;
        }
        if let Some(v) = PARTITIONS.parse_from(get)? {
            c.partitions = v;
        }
        if let Some(v) = REPLICATION_FACTOR.parse_from(get)? {
            c.replication_factor = Some(v);
        }
        if let Some(v) = MIN_INSYNC_REPLICAS.parse_from(get)? {
            c.min_insync_replicas = Some(v);
        }
        if let Some(e) = get("HERALD_ENVIRONMENT") {
            c.environment = e;
        }
        for (key, property) in SECURITY_KEYS {
            if let Some(v) = get(key) {
                c.security.insert((*property).to_owned(), v);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Set the acknowledgement a publish waits for.
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Turn the idempotent producer on or off.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.idempotence = on;
        self
    }

    /// Where a new consumer group starts.
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.offset_reset = reset;
        self
    }

    /// Commit offsets in the background instead of after each ack (loses
    /// at-least-once: an event can be committed before its handler ran).
    pub fn auto_commit(mut self, on: bool) -> Self {
        self.auto_commit = on;
        self
    }

    /// Producer compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// How long the producer waits to fill a batch.
    pub fn linger_ms(mut self, ms: u32) -> Self {
        self.linger_ms = ms;
        self
    }

    /// How long the brokers wait for a silent group member (a crashed
    /// process) before its partitions go to the others, in ms (default
    /// 45,000; 1,000–3,600,000, within the brokers' own bounds).
    pub fn session_timeout_ms(mut self, ms: u32) -> Self {
        self.session_timeout_ms = ms;
        self
    }

    /// Set the most records in one producer batch. `1` for brokers that
    /// cannot serve a fetch from an offset inside a batch (tansu 0.6 skips
    /// to the next batch, which loses events on resume).
    pub fn batch_messages(mut self, n: u32) -> Self {
        self.batch_messages = n;
        self
    }

    /// Partitions of the topics herald creates.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// Replicas of each partition of the topics herald creates (default:
    /// the brokers' `default.replication.factor`). A topic that exists
    /// keeps its own.
    pub fn replication_factor(mut self, n: u32) -> Self {
        self.replication_factor = Some(n);
        self
    }

    /// `min.insync.replicas` of the topics herald creates: how many
    /// replicas an `acks=all` publish waits for before it is `Ok`, so an
    /// acked event survives the loss of all but that many (default: the
    /// brokers' setting). At most the replication factor.
    pub fn min_insync_replicas(mut self, n: u32) -> Self {
        self.min_insync_replicas = Some(n);
        self
    }

    /// The consumer group when a subscription names none.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.delivery = self.delivery.group(group);
        self
    }

    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }

    /// The environment that namespaces Kafka topics (`<environment>.<topic>`).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Publish and call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.delivery = self.delivery.timeout(timeout);
        self
    }

    /// Set how long this process remembers the idempotency keys it
    /// published (zero: not at all).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.delivery = self.delivery.dedupe_window(window);
        self
    }

    /// Set the largest payload sent.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        let limits = self.delivery.envelope_limits().max_payload_bytes(bytes);
        self.delivery = self.delivery.limits(limits);
        self
    }

    /// Delivery attempts before a group dead-letters an event.
    pub fn deliveries(&self) -> u32 {
        self.delivery.max_deliver_attempts()
    }

    /// Which partition a keyless event goes to.
    pub fn keyless(&self) -> herald::config::KeylessPartition {
        self.delivery.keyless_placement()
    }

    /// How long published idempotency keys are remembered.
    pub fn dedupe_duration(&self) -> Duration {
        self.delivery.dedupe_window_duration()
    }

    /// The largest payload sent.
    pub fn payload_limit(&self) -> usize {
        self.delivery.envelope_limits().payload_bytes()
    }

    /// The bootstrap servers.
    pub fn servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The environment: the prefix of every Kafka topic herald uses.
    pub fn environment_name(&self) -> &str {
        &self.environment
    }

    /// Pass a librdkafka security property through (`security.protocol`,
    /// `ssl.*`, `sasl.*`).
    pub fn security(mut self, property: impl Into<String>, value: impl Into<String>) -> Self {
        self.security.insert(property.into(), value.into());
        self
    }

    /// The Kafka topic of herald topic `topic`: `<environment>.<topic>`.
    pub fn kafka_topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.environment)
    }

    /// Where dead letters go (`HERALD_DEAD_LETTERS`).
    pub(crate) fn dead_letters(&self) -> &herald::config::DeadLetters {
        self.delivery.dead_letter_destination()
    }

    /// The dead-letter topic: the name `HERALD_DEAD_LETTERS` gives, else
    /// `<environment>.dead_letters`.
    pub fn dead_letter_topic(&self) -> String {
        match self.delivery.dead_letter_destination().name() {
            Some(name) => name.to_owned(),
            None => self.kafka_topic("dead_letters"),
        }
    }

    /// Partitions of the topics herald creates.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Replicas of each partition of the topics herald creates; `None`:
    /// the brokers' default.
    pub fn replication(&self) -> Option<u32> {
        self.replication_factor
    }

    /// The `min.insync.replicas` herald sets on the topics it creates;
    /// `None`: the brokers' setting.
    pub fn min_insync(&self) -> Option<u32> {
        self.min_insync_replicas
    }

    /// The default consumer group.
    pub fn group_name(&self) -> &str {
        self.delivery.group_name().unwrap_or(DEFAULT_GROUP)
    }

    /// Publish and call timeout.
    pub fn timeout_duration(&self) -> Duration {
        self.delivery.timeout_duration()
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<()> {
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        for server in &servers {
            let ok = match server.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty()
                        && !host.contains(char::is_whitespace)
                        && port.parse::<u16>().is_ok_and(|p| p > 0)
                }
                None => false,
            };
            if !ok {
                return Err(invalid(
                    "HERALD_KAFKA_BOOTSTRAP_SERVERS",
                    &self.bootstrap_servers,
                    "comma-separated host:port pairs, e.g. k1:9092,k2:9092",
                ));
            }
        }
        if self.idempotence && self.acks != Acks::All {
            return Err(invalid(
                "HERALD_KAFKA_ACKS",
                self.acks.property(),
                "`all` while HERALD_KAFKA_ENABLE_IDEMPOTENCE is true (the idempotent producer needs acks from every in-sync replica)",
            ));
        }
        LINGER_MS.check(self.linger_ms, 0, 1000)?;
        SESSION_TIMEOUT_MS.check(self.session_timeout_ms, 1000, 3_600_000)?;
        PARTITIONS.check(self.partitions, 1, 10_000)?;
        if let Some(n) = self.replication_factor {
            REPLICATION_FACTOR.check(n, 1, 1000)?;
        }
        if let Some(n) = self.min_insync_replicas {
            MIN_INSYNC_REPLICAS.check(n, 1, 1000)?;
            if let Some(rf) = self.replication_factor.filter(|rf| n > *rf) {
                return Err(invalid(
                    "HERALD_KAFKA_MIN_INSYNC_REPLICAS",
                    n,
                    &format!("at most HERALD_KAFKA_REPLICATION_FACTOR ({rf}): more in-sync replicas than replicas refuses every acks=all publish"),
                ));
            }
        }
        BATCH_MESSAGES.check(self.batch_messages, 1, 1_000_000)?;
        herald::config::check_environment(&self.environment)?;
        self.delivery.validate()?;
        self.delivery.windowed_dedupe("the Kafka store")?;
        herald::config::check_timeout(self.delivery.timeout_duration())?;
        if let Some(p) = self.security.get("security.protocol") {
            let known = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
            if !known.contains(&p.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    "HERALD_KAFKA_SECURITY_PROTOCOL",
                    p,
                    "`plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`",
                ));
            }
        }
        if let Some(m) = self.security.get("sasl.mechanism") {
            let known = [
                "PLAIN",
                "SCRAM-SHA-256",
                "SCRAM-SHA-512",
                "GSSAPI",
                "OAUTHBEARER",
            ];
            if !known.contains(&m.to_ascii_uppercase().as_str()) {
                return Err(invalid(
                    "HERALD_KAFKA_SASL_MECHANISM",
                    m,
                    "`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `GSSAPI` or `OAUTHBEARER`",
                ));
            }
        }
        Ok(())
    }

    fn common_properties(&self) -> BTreeMap<String, String> {
        let mut p = self.security.clone();
        p.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        p
    }

    /// The librdkafka producer settings.
    pub fn producer_properties(&self) -> BTreeMap<String, String> {
        let mut p = self.common_properties();
        p.insert("acks".into(), self.acks.property().into());
        p.insert("enable.idempotence".into(), self.idempotence.to_string());
        p.insert(
            "compression.type".into(),
            self.compression.property().into(),
        );
        p.insert("linger.ms".into(), self.linger_ms.to_string());
        p.insert("batch.num.messages".into(), self.batch_messages.to_string());
        // A payload at the limit travels with its headers beside it.
        p.insert(
            "message.max.bytes".into(),
            (self.payload_limit() + 256 * 1024).to_string(),
        );
        p.insert(
            "message.timeout.ms".into(),
            self.delivery.timeout_duration().as_millis().to_string(),
        );
        p
    }

    /// The librdkafka settings of an admin client.
    pub fn admin_properties(&self) -> BTreeMap<String, String> {
        self.common_properties()
    }

    /// The librdkafka settings of a consumer in no group (metadata,
    /// group-less subscriptions, replay): it commits nothing.
    pub fn reader_properties(&self) -> BTreeMap<String, String> {
        let mut p = self.common_properties();
        // librdkafka assigns partitions only to a consumer with a group id;
        // one that never subscribes never joins it, and this one commits
        // nothing.
        p.insert(
            "group.id".into(),
            format!(
                "{}._reader.{}",
                self.environment,
                uuid::Uuid::now_v7().simple()
            ),
        );
        p.insert("enable.auto.commit".into(), "false".into());
        p.insert("enable.auto.offset.store".into(), "false".into());
        p.insert("enable.partition.eof".into(), "false".into());
        p.insert("fetch.wait.max.ms".into(), "10".into());
        p.insert(
            "fetch.message.max.bytes".into(),
            (self.payload_limit() + 256 * 1024).to_string(),
        );
        p
    }

    /// The librdkafka consumer settings of group `group`. Offsets are
    /// committed by herald after each ack unless auto commit was chosen.
    pub fn consumer_properties(&self, group: &str) -> BTreeMap<String, String> {
        let mut p = self.common_properties();
        p.insert("group.id".into(), group.to_owned());
        let reset = match self.offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        };
        p.insert("auto.offset.reset".into(), reset.into());
        p.insert("enable.auto.commit".into(), self.auto_commit.to_string());
        p.insert(
            "session.timeout.ms".into(),
            self.session_timeout_ms.to_string(),
        );
        p.insert("enable.auto.offset.store".into(), "false".into());
        p.insert("enable.partition.eof".into(), "false".into());
        p.insert("fetch.wait.max.ms".into(), "10".into());
        p.insert(
            "fetch.message.max.bytes".into(),
            (self.payload_limit() + 256 * 1024).to_string(),
        );
        // Regex subscriptions see new topics within a second.
        p.insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
        p
    }

    /// Whether publishes may be lost without an error (`acks=0`): said at
    /// start-up by the store, as DESIGN.md §9 asks.
    pub fn may_lose_publishes(&self) -> bool {
        self.acks == Acks::None
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::new(DEFAULT_BOOTSTRAP_SERVERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::ErrorCode;

    fn from(pairs: &[(&str, &str)]) -> Result<KafkaConfig> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KafkaConfig::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = from(&[]).unwrap();
        assert_eq!(c, KafkaConfig::default());
        let p = c.producer_properties();
        assert_eq!(p["bootstrap.servers"], "localhost:9092");
        assert_eq!(
            (p["acks"].as_str(), p["enable.idempotence"].as_str()),
            ("all", "true")
        );
        assert_eq!(
            (p["compression.type"].as_str(), p["linger.ms"].as_str()),
            ("none", "5")
        );
        let cp = c.consumer_properties("billing");
        assert_eq!(cp["group.id"], "billing");
        assert_eq!(cp["auto.offset.reset"], "latest");
        assert_eq!(cp["enable.auto.commit"], "false");
        assert_eq!(c.partition_count(), 3);
        assert_eq!(c.kafka_topic("orders.placed"), "local.orders.placed");
        assert_eq!(c.dead_letter_topic(), "local.dead_letters");
    }

    #[test]
    fn every_key_is_read() {
        let c = from(&[
            ("HERALD_KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2"),
            ("HERALD_KAFKA_ACKS", "1"),
            ("HERALD_KAFKA_ENABLE_IDEMPOTENCE", "false"),
            ("HERALD_KAFKA_AUTO_OFFSET_RESET", "earliest"),
            ("HERALD_KAFKA_ENABLE_AUTO_COMMIT", "true"),
            ("HERALD_KAFKA_COMPRESSION", "zstd"),
            ("HERALD_KAFKA_LINGER_MS", "0"),
            ("HERALD_KAFKA_PARTITIONS", "12"),
            ("HERALD_KAFKA_REPLICATION_FACTOR", "3"),
            ("HERALD_KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("HERALD_GROUP", "audit"),
            ("HERALD_ENVIRONMENT", "prod"),
            ("HERALD_TIMEOUT_SECONDS", "5"),
            ("HERALD_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("HERALD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("HERALD_KAFKA_SASL_USERNAME", "u"),
        ])
        .unwrap();
        let p = c.producer_properties();
        assert_eq!(p["acks"], "1");
        assert_eq!(p["enable.idempotence"], "false");
        assert_eq!(p["compression.type"], "zstd");
        assert_eq!(p["linger.ms"], "0");
        assert_eq!(p["message.timeout.ms"], "5000");
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.username"], "u");
        let cp = c.consumer_properties(c.group_name());
        assert_eq!(cp["group.id"], "audit");
        assert_eq!(cp["auto.offset.reset"], "earliest");
        assert_eq!(cp["enable.auto.commit"], "true");
        assert_eq!(c.partition_count(), 12);
        assert_eq!((c.replication(), c.min_insync()), (Some(3), Some(2)));
        assert_eq!(c.kafka_topic("a.b"), "prod.a.b");
    }

    #[test]
    fn bad_values_name_key_value_and_range() {
        for (pairs, key) in [
            (
                vec![("HERALD_KAFKA_BOOTSTRAP_SERVERS", "k1")],
                "HERALD_KAFKA_BOOTSTRAP_SERVERS",
            ),
            (
                vec![("HERALD_KAFKA_BOOTSTRAP_SERVERS", "k1:99999")],
                "HERALD_KAFKA_BOOTSTRAP_SERVERS",
            ),
            (vec![("HERALD_KAFKA_ACKS", "2")], "HERALD_KAFKA_ACKS"),
            (
                vec![("HERALD_KAFKA_SESSION_TIMEOUT_MS", "999")],
                "HERALD_KAFKA_SESSION_TIMEOUT_MS",
            ),
            (vec![("HERALD_KAFKA_ACKS", "0")], "HERALD_KAFKA_ACKS"),
            (
                vec![("HERALD_KAFKA_ENABLE_IDEMPOTENCE", "yes")],
                "HERALD_KAFKA_ENABLE_IDEMPOTENCE",
            ),
            (
                vec![("HERALD_KAFKA_AUTO_OFFSET_RESET", "middle")],
                "HERALD_KAFKA_AUTO_OFFSET_RESET",
            ),
            (
                vec![("HERALD_KAFKA_COMPRESSION", "brotli")],
                "HERALD_KAFKA_COMPRESSION",
            ),
            (
                vec![("HERALD_KAFKA_LINGER_MS", "1001")],
                "HERALD_KAFKA_LINGER_MS",
            ),
            (
                vec![("HERALD_KAFKA_LINGER_MS", "-1")],
                "HERALD_KAFKA_LINGER_MS",
            ),
            (
                vec![("HERALD_KAFKA_PARTITIONS", "0")],
                "HERALD_KAFKA_PARTITIONS",
            ),
            (
                vec![("HERALD_KAFKA_PARTITIONS", "10001")],
                "HERALD_KAFKA_PARTITIONS",
            ),
            (
                vec![("HERALD_KAFKA_REPLICATION_FACTOR", "0")],
                "HERALD_KAFKA_REPLICATION_FACTOR",
            ),
            (
                vec![("HERALD_KAFKA_REPLICATION_FACTOR", "1001")],
                "HERALD_KAFKA_REPLICATION_FACTOR",
            ),
            (
                vec![("HERALD_KAFKA_REPLICATION_FACTOR", "three")],
                "HERALD_KAFKA_REPLICATION_FACTOR",
            ),
            (
                vec![("HERALD_KAFKA_MIN_INSYNC_REPLICAS", "0")],
                "HERALD_KAFKA_MIN_INSYNC_REPLICAS",
            ),
            (
                vec![
                    ("HERALD_KAFKA_REPLICATION_FACTOR", "2"),
                    ("HERALD_KAFKA_MIN_INSYNC_REPLICAS", "3"),
                ],
                "HERALD_KAFKA_MIN_INSYNC_REPLICAS",
            ),
            (vec![("HERALD_GROUP", "a\u{7}b")], "HERALD_GROUP"),
            (vec![("HERALD_ENVIRONMENT", "Prod")], "HERALD_ENVIRONMENT"),
            (
                vec![("HERALD_TIMEOUT_SECONDS", "301")],
                "HERALD_TIMEOUT_SECONDS",
            ),
            (
                vec![("HERALD_KAFKA_SECURITY_PROTOCOL", "tls")],
                "HERALD_KAFKA_SECURITY_PROTOCOL",
            ),
            (
                vec![("HERALD_KAFKA_SASL_MECHANISM", "MD5")],
                "HERALD_KAFKA_SASL_MECHANISM",
            ),
        ] {
            let e = from(&pairs).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        // acks=0 is allowed without idempotence, and says it may lose publishes.
        let lossy = from(&[
            ("HERALD_KAFKA_ACKS", "0"),
            ("HERALD_KAFKA_ENABLE_IDEMPOTENCE", "false"),
        ])
        .unwrap();
        assert!(lossy.may_lose_publishes());
    }
}

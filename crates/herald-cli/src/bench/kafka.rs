//! `herald bench --store kafka://…`: herald's Kafka publishes next to the
//! same records (same key, headers and value) sent by a raw rdkafka
//! producer with the same settings, in the same run: one publish at a time
//! awaiting each delivery report (sync), and [`TASKS`] tasks each sending
//! [`BATCH`] records before awaiting their reports (pipelined); publish →
//! group consumer latency through herald and through a raw rdkafka consumer
//! in a group of its own; and how fast a herald group drains a backlog,
//! next to a raw rdkafka group consumer committing its offsets.
//! Everything lives in a `HERALD_ENVIRONMENT` of its own whose topics are
//! deleted after. Other `HERALD_KAFKA_*` settings apply to both sides
//! (tansu 0.6 needs `HERALD_KAFKA_BATCH_MESSAGES=1`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, Envelope, Error, ErrorCode, Result, Topic};
use herald_kafka::{client_config as client, KafkaConfig, KafkaStore};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use super::drain::Drains;
use super::durable;
use super::progress;
use super::sample::{fresh, sample};
use super::stats::Percentiles;

/// What the Kafka run measured.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaFigures {
    /// The brokers.
    pub brokers: String,
    /// herald publishes/s, each awaiting its delivery report.
    pub herald_sync: f64,
    /// raw rdkafka sends/s, each awaiting its delivery report.
    pub raw_sync: f64,
    /// herald events/s, [`TASKS`] tasks publishing batches of [`BATCH`].
    pub herald_pipelined: f64,
    /// raw rdkafka records/s, the same way.
    pub raw_pipelined: f64,
    pub ratio_sync: f64,
    pub ratio_pipelined: f64,
    /// Publish called → a herald group member has the event.
    pub end_to_end: Percentiles,
    /// Send called → a raw rdkafka group consumer has the record.
    pub raw_end_to_end: Percentiles,
    /// Raw p50 over herald p50 (1 = as fast as raw).
    pub ratio_latency_p50: f64,
    /// How a herald group drains (receive + ack), next to a raw rdkafka
    /// group consumer committing its offsets ([`Raw::consume`]).
    pub drain: Drains,
    /// A command's round trip to a handler on another store (process).
    pub call: Percentiles,
}

/// Concurrent publishing tasks in the pipelined run.
pub const TASKS: usize = 4;
/// Records sent before their delivery reports are awaited.
pub const BATCH: usize = 100;
/// The longest the raw side waits for one report, record or answer.
const WAIT: Duration = Duration::from_secs(60);

/// Run the benchmark against the brokers of `url` (`kafka://HOST:PORT,…`).
pub async fn run(url: &str, short: bool) -> Result<KafkaFigures> {
    let servers = url.trim_start_matches("kafka://").trim_end_matches('/');
    let environment = format!(
        "herald-bench-p{}x{:06x}",
        std::process::id(),
        fastrand::u32(..1 << 24)
    );
    let config = KafkaConfig::from_lookup(&|key| match key {
        "HERALD_KAFKA_BOOTSTRAP_SERVERS" => Some(servers.to_owned()),
        "HERALD_ENVIRONMENT" => Some(environment.clone()),
        _ => herald::config::env(key),
    })?;
    progress("Kafka: open the store");
    let store = KafkaStore::open(config.clone()).await?;
    let result = measure(&store, servers, short).await;
    progress("Kafka: close the store and delete the bench's topics");
    store.close().await;
    remove_topics(&config).await;
    result
}

async fn measure(store: &KafkaStore, servers: &str, short: bool) -> Result<KafkaFigures> {
    let config = store.config().clone();
    let bus = Bus::new(store.clone());
    let sample = sample()?;
    let partitions = config.partition_count();
    progress("Kafka: create the topics");
    store
        .create_topic(&Topic::new("bench.orders")?, partitions)
        .await?;
    store
        .create_topic(&Topic::new("bench.raw")?, partitions)
        .await?;
    let raw_topic = config.kafka_topic("bench.raw");
    let producer: FutureProducer = client(config.producer_properties())
        .create()
        .map_err(|e| kafka("create the raw producer", e))?;
    let raw = Raw {
        producer,
        topic: raw_topic.clone(),
        max_deliver: config.deliveries(),
    };

    let sync = if short { 300 } else { 3_000 };
    let pipelined = TASKS * BATCH * if short { 5 } else { 50 };
    progress("Kafka: publishes one at a time, herald then raw");
    let herald_sync = durable::herald_publishes(&bus, sync, 1, 1, &sample).await?;
    let raw_sync = raw.publishes(sync, 1, 1, &sample).await?;
    progress("Kafka: pipelined publishes, herald then raw");
    let herald_pipelined =
        durable::herald_publishes(&bus, pipelined, TASKS, BATCH, &sample).await?;
    let raw_pipelined = raw.publishes(pipelined, TASKS, BATCH, &sample).await?;
    let rounds = if short { 100 } else { 500 };
    let warmup = (rounds / 10).max(50);
    progress("Kafka: publish → group member latency, herald then raw");
    let end_to_end = durable::end_to_end(&bus, rounds, warmup).await?;
    let raw_end_to_end = raw.end_to_end(&config, rounds, warmup, &sample).await?;
    let consume = if short { 2_000 } else { 20_000 };
    progress("Kafka: raw group consumer with commits");
    let raw_1 = raw
        .consume(&config, "bench.raw-drain1", consume / 10, 1)
        .await?;
    let raw_batched = raw
        .consume(&config, "bench.raw-drain", consume, BATCH)
        .await?;
    progress("Kafka: herald group drains");
    let drain = Drains::measure(
        if short { 1_000 } else { 10_000 },
        |_| {
            let config = config.clone();
            async move { Ok(Bus::new(KafkaStore::open(config).await?)) }
        },
        (raw_1, raw_batched),
    )
    .await?;
    progress("Kafka: command round trip to another store handle");
    let server = KafkaStore::open(config.clone()).await?;
    let call = durable::call_latency(&Bus::new(server.clone()), &bus, rounds, warmup).await;
    server.close().await;
    let call = call?;
    Ok(KafkaFigures {
        brokers: servers.to_owned(),
        herald_sync,
        raw_sync,
        herald_pipelined,
        raw_pipelined,
        ratio_sync: herald_sync / raw_sync,
        ratio_pipelined: herald_pipelined / raw_pipelined,
        ratio_latency_p50: raw_end_to_end.p50_us / end_to_end.p50_us,
        end_to_end,
        raw_end_to_end,
        drain,
        call,
    })
}

/// The raw side: an rdkafka producer with herald's producer settings.
#[derive(Clone)]
struct Raw {
    producer: FutureProducer,
    topic: String,
    max_deliver: u32,
}

impl Raw {
    /// Send `env` as herald would (same key, headers and value); the
    /// delivery report to await.
    fn send(&self, env: &Envelope) -> Result<rdkafka::producer::DeliveryFuture> {
        let record = herald_kafka::codec::encode(env, self.max_deliver)?;
        let mut out = FutureRecord::to(&self.topic)
            .payload(&record.value[..])
            .headers(record.headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_str());
        }
        self.producer
            .send_result(out)
            .map_err(|(e, _)| kafka("raw send", e))
    }

    /// Await a delivery report, for at most [`WAIT`].
    async fn delivered(report: rdkafka::producer::DeliveryFuture) -> Result<()> {
        tokio::time::timeout(WAIT, report)
            .await
            .map_err(|_| timeout("a raw delivery report"))?
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the raw producer went away"))?
            .map(|_| ())
            .map_err(|(e, _)| kafka("raw delivery", e))
    }

    /// `tasks` tasks each sending its share of `events` in batches of
    /// `batch` (a batch sent whole, then its reports awaited): records/s.
    async fn publishes(
        &self,
        events: usize,
        tasks: usize,
        batch: usize,
        sample: &Envelope,
    ) -> Result<f64> {
        let (raw, sample) = (self.clone(), sample.clone());
        durable::rate(events, tasks, batch, move |n| {
            let (raw, sample) = (raw.clone(), sample.clone());
            async move {
                let reports = (0..n)
                    .map(|_| raw.send(&fresh(&sample)))
                    .collect::<Result<Vec<_>>>()?;
                for r in reports {
                    Raw::delivered(r).await?;
                }
                Ok(())
            }
        })
        .await
    }

    /// A raw rdkafka consumer in a group of its own (`group`, herald's
    /// consumer settings, from the earliest offset) reading `events`
    /// records of the raw topic and committing its offsets every
    /// `commit_every` records — awaiting each commit when that is 1 (the
    /// member loop's baseline), else asynchronously: records/s, from the
    /// first record (the group's join is not counted).
    async fn consume(
        &self,
        config: &KafkaConfig,
        group: &str,
        events: usize,
        commit_every: usize,
    ) -> Result<f64> {
        let group = config.kafka_topic(group);
        let mut properties = config.consumer_properties(&group);
        properties.insert("auto.offset.reset".into(), "earliest".into());
        let consumer: StreamConsumer = client(properties)
            .create()
            .map_err(|e| kafka("create the raw consumer", e))?;
        consumer
            .subscribe(&[self.topic.as_str()])
            .map_err(|e| kafka("subscribe the raw consumer", e))?;
        let mut start = None;
        for read in 1..=events {
            let msg = tokio::time::timeout(WAIT, consumer.recv())
                .await
                .map_err(|_| timeout("a record for the raw consumer"))?
                .map_err(|e| kafka("raw receive", e))?;
            start.get_or_insert_with(Instant::now);
            if commit_every == 1 {
                consumer
                    .commit_message(&msg, CommitMode::Sync)
                    .map_err(|e| kafka("raw commit", e))?;
            } else if read % commit_every == 0 || read == events {
                consumer
                    .commit_message(&msg, CommitMode::Async)
                    .map_err(|e| kafka("raw commit", e))?;
            }
        }
        let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
        Ok(events as f64 / elapsed.as_secs_f64())
    }

    /// One send at a time; from the send to a raw consumer in a group of its
    /// own (herald's group settings) having it, committing each as herald's
    /// acks do.
    async fn end_to_end(
        &self,
        config: &KafkaConfig,
        rounds: usize,
        warmup: usize,
        sample: &Envelope,
    ) -> Result<Percentiles> {
        let group = config.kafka_topic("bench.raw-latency");
        let consumer: StreamConsumer = client(config.consumer_properties(&group))
            .create()
            .map_err(|e| kafka("create the raw consumer", e))?;
        consumer
            .subscribe(&[self.topic.as_str()])
            .map_err(|e| kafka("subscribe the raw consumer", e))?;
        let consumer = Arc::new(consumer);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = consumer.clone();
        let task = tokio::spawn(async move {
            while let Ok(msg) = reader.recv().await {
                let at = Instant::now();
                let _ = reader.commit_message(&msg, CommitMode::Async);
                if tx.send(at).is_err() {
                    break;
                }
            }
        });
        // The group joins and starts at the end: send until a record arrives.
        let deadline = Instant::now() + WAIT;
        loop {
            Raw::delivered(self.send(&fresh(sample))?).await?;
            if tokio::time::timeout(Duration::from_millis(500), rx.recv())
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                task.abort();
                return Err(timeout("the raw consumer's first record"));
            }
        }
        while rx.try_recv().is_ok() {}
        let mut samples = Vec::with_capacity(warmup + rounds);
        for _ in 0..warmup + rounds {
            let started = Instant::now();
            Raw::delivered(self.send(&fresh(sample))?).await?;
            let at = tokio::time::timeout(WAIT, rx.recv())
                .await
                .map_err(|_| timeout("a record for the raw consumer"))?
                .ok_or_else(|| Error::internal("the raw consumer stopped"))?;
            samples.push(at.saturating_duration_since(started));
        }
        task.abort();
        Ok(Percentiles::of(samples, warmup))
    }
}

/// Delete every topic of the bench's environment.
async fn remove_topics(config: &KafkaConfig) {
    let Ok(admin) = client(config.admin_properties()).create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let prefix = format!("{}.", config.environment_name());
    let names: Vec<String> = match admin.inner().fetch_metadata(None, Duration::from_secs(10)) {
        Ok(md) => md
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect(),
        Err(_) => return,
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(WAIT, admin.delete_topics(&refs, &options)).await;
}

fn timeout(what: &str) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!("Kafka: {what} did not come in {} s", WAIT.as_secs()),
    )
}

fn kafka(doing: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("Kafka: {doing}: {e}"))
}

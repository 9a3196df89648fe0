//! `herald bench --store nats://…`: herald's JetStream publishes next to
//! the same messages (same headers and body) published with raw async-nats
//! to a stream of the same settings, in the same run: one publish at a time
//! awaiting each ack (sync), and [`TASKS`] tasks each sending [`BATCH`]
//! publishes before awaiting their acks (pipelined); publish → durable
//! group member latency; and how fast a group drains a backlog. Everything
//! lives under a subject prefix of its own whose streams are deleted after.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use herald::{Bus, Envelope, Error, ErrorCode, Message, Result, StartPosition, Topic};
use herald_nats::{NatsConfig, NatsStore, Storage};
use serde::Serialize;

use super::sample::{fresh, sample};
use super::stats::Percentiles;

/// What the NATS run measured.
#[derive(Debug, Clone, Serialize)]
pub struct NatsFigures {
    /// herald publishes/s, each awaiting its ack.
    pub herald_sync: f64,
    /// raw async-nats publishes/s, each awaiting its ack.
    pub raw_sync: f64,
    /// herald events/s, [`TASKS`] tasks publishing batches of [`BATCH`].
    pub herald_pipelined: f64,
    /// raw async-nats messages/s, the same way.
    pub raw_pipelined: f64,
    pub ratio_sync: f64,
    pub ratio_pipelined: f64,
    /// Publish called → a durable group member has the event.
    pub end_to_end: Percentiles,
    /// Events/s a durable group drains (receive + ack), with one member
    /// and with four.
    pub group_drain_1: f64,
    pub group_drain_4: f64,
}

/// Concurrent publishing tasks in the pipelined run.
pub const TASKS: usize = 4;
/// Publishes sent before their acks are awaited.
pub const BATCH: usize = 100;

/// Run the benchmark against `url`.
pub async fn run(url: &str, short: bool) -> Result<NatsFigures> {
    let prefix = format!(
        "herald-bench.p{}x{:06x}",
        std::process::id(),
        fastrand::u32(..1 << 24)
    );
    let config = NatsConfig::new(url).prefix(&prefix).storage(Storage::File);
    let store = NatsStore::open(config).await?;
    let result = measure(&store, &prefix, short).await;
    let client = store.client().clone();
    store.close().await;
    remove_streams(&client, &prefix).await;
    result
}

async fn measure(store: &NatsStore, prefix: &str, short: bool) -> Result<NatsFigures> {
    let bus = Bus::new(store.clone());
    let sample = sample()?;
    let js = jetstream::new(store.client().clone());
    let topic = Topic::new("bench.orders")?;
    store.ensure_topic(&topic).await?;
    let raw_subject = format!("{prefix}.raw.orders");
    js.create_stream(stream::Config {
        name: format!("{}_RAW", prefix.replace('.', "_")),
        subjects: vec![raw_subject.clone()],
        storage: stream::StorageType::File,
        duplicate_window: herald_nats::DEFAULT_DEDUPE_WINDOW,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| nats("make the raw stream", e))?;

    let sync = if short { 500 } else { 5_000 };
    let pipelined = TASKS * BATCH * if short { 10 } else { 100 };
    let herald_sync = herald_publishes(&bus, sync, 1, 1, &sample).await?;
    let raw_sync = raw_publishes(&js, &raw_subject, sync, 1, 1, &sample).await?;
    let herald_pipelined = herald_publishes(&bus, pipelined, TASKS, BATCH, &sample).await?;
    let raw_pipelined = raw_publishes(&js, &raw_subject, pipelined, TASKS, BATCH, &sample).await?;
    let rounds = if short { 200 } else { 1000 };
    let end_to_end = end_to_end(&bus, rounds, (rounds / 10).max(50)).await?;
    let drain = if short { 2_000 } else { 20_000 };
    let group_drain_1 = super::drain::group_drain(&bus, drain, 1, BATCH).await?;
    let group_drain_4 = super::drain::group_drain(&bus, drain, 4, BATCH).await?;
    Ok(NatsFigures {
        herald_sync,
        raw_sync,
        herald_pipelined,
        raw_pipelined,
        ratio_sync: herald_sync / raw_sync,
        ratio_pipelined: herald_pipelined / raw_pipelined,
        end_to_end,
        group_drain_1,
        group_drain_4,
    })
}

/// `tasks` tasks each publishing its share of `events` through herald in
/// batches of `batch` (a batch is sent whole, then its acks awaited).
async fn herald_publishes(
    bus: &Bus,
    events: usize,
    tasks: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let per_task = events / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (bus, sample) = (bus.clone(), sample.clone());
            tokio::spawn(async move {
                let mut left = per_task;
                while left > 0 {
                    let n = batch.min(left);
                    bus.publish((0..n).map(|_| fresh(&sample)).collect::<Vec<_>>())
                        .await?;
                    left -= n;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for h in handles {
        h.await.map_err(|e| Error::internal(e.to_string()))??;
    }
    Ok((per_task * tasks) as f64 / start.elapsed().as_secs_f64())
}

/// The same messages, headers and body as herald sends them, published
/// with raw async-nats the same way.
async fn raw_publishes(
    js: &jetstream::Context,
    subject: &str,
    events: usize,
    tasks: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let per_task = events / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (js, sample, subject) = (js.clone(), sample.clone(), subject.to_owned());
            tokio::spawn(async move {
                let mut left = per_task;
                while left > 0 {
                    let n = batch.min(left);
                    let mut acks = Vec::with_capacity(n);
                    for _ in 0..n {
                        let env = fresh(&sample);
                        let (pairs, body) = herald::headers::encode(&env)?;
                        let mut headers = async_nats::HeaderMap::new();
                        for (name, value) in pairs {
                            headers.insert(name, value.as_str());
                        }
                        let msg = jetstream::message::PublishMessage::build()
                            .headers(headers)
                            .message_id(env.idempotency_key().as_ref())
                            .payload(body);
                        let ack = js
                            .send_publish(subject.clone(), msg)
                            .await
                            .map_err(|e| nats("raw publish", e))?;
                        acks.push(ack);
                    }
                    for ack in acks {
                        ack.await.map_err(|e| nats("raw publish ack", e))?;
                    }
                    left -= n;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for h in handles {
        h.await.map_err(|e| Error::internal(e.to_string()))??;
    }
    Ok((per_task * tasks) as f64 / start.elapsed().as_secs_f64())
}

/// One publish at a time; from the call to a durable group member having it.
async fn end_to_end(bus: &Bus, rounds: usize, warmup: usize) -> Result<Percentiles> {
    let mut sub = bus
        .subscribe_raw("bench.latency")
        .group("bench.latency")
        .start(StartPosition::Latest)
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = sub.next().await {
            let at = Instant::now();
            if d.ack().await.is_err() || tx.send(at).is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::with_capacity(warmup + rounds);
    for i in 0..warmup + rounds {
        let started = Instant::now();
        bus.publish(Message::json("bench.latency", &i)?).await?;
        let at = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| Error::new(ErrorCode::Timeout, "the group member got nothing"))?
            .ok_or_else(|| Error::internal("the subscriber stopped"))?;
        samples.push(at.saturating_duration_since(started));
    }
    Ok(Percentiles::of(samples, warmup))
}

/// Delete every stream under `prefix`.
async fn remove_streams(client: &async_nats::Client, prefix: &str) {
    let js = jetstream::new(client.clone());
    let head = prefix.replace('.', "_");
    let mut names = js.stream_names();
    let mut doomed = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with(&head) {
            doomed.push(name);
        }
    }
    for name in doomed {
        let _ = js.delete_stream(&name).await;
    }
}

fn nats(doing: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("NATS: {doing}: {e}"))
}

//! `herald bench --store nats://…`: herald's JetStream publishes next to
//! the same messages (same headers and body) published with raw async-nats
//! to a stream of the same settings, in the same run: one publish at a time
//! awaiting each ack (sync), and [`TASKS`] tasks each sending [`BATCH`]
//! publishes before awaiting their acks (pipelined); publish → durable
//! group member latency; and how fast a group drains a backlog, next to a
//! raw async-nats pull consumer with explicit acks. Everything
//! lives under a subject prefix of its own whose streams are deleted after.

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use herald::{Bus, Envelope, Error, ErrorCode, Result, Topic};
use herald_nats::{NatsConfig, NatsStore, Storage};
use serde::Serialize;

use super::drain::Drains;
use super::durable;
use super::progress;
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
    /// The same with raw async-nats ([`raw_end_to_end`]): a JetStream
    /// publish (ack awaited) → a durable pull consumer has the message.
    pub raw_end_to_end: Percentiles,
    /// `raw_end_to_end.p50 / end_to_end.p50`.
    pub ratio_latency_p50: f64,
    /// How a durable group drains (receive + ack), next to a raw
    /// async-nats pull consumer over the raw stream ([`raw_consume`]).
    pub drain: Drains,
    /// A command's round trip to a handler on another store (process).
    pub call: Percentiles,
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
    let store = NatsStore::open(config.clone()).await?;
    let result = measure(&store, &config, &prefix, short).await;
    let client = store.client().clone();
    store.close().await;
    remove_streams(&client, &prefix).await;
    result
}

async fn measure(
    store: &NatsStore,
    config: &NatsConfig,
    prefix: &str,
    short: bool,
) -> Result<NatsFigures> {
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
    progress("NATS: publishes one at a time, herald then raw");
    let herald_sync = durable::herald_publishes(&bus, sync, 1, 1, &sample).await?;
    let raw_sync = raw_publishes(&js, &raw_subject, sync, 1, 1, &sample).await?;
    progress("NATS: pipelined publishes, herald then raw");
    let herald_pipelined =
        durable::herald_publishes(&bus, pipelined, TASKS, BATCH, &sample).await?;
    let raw_pipelined = raw_publishes(&js, &raw_subject, pipelined, TASKS, BATCH, &sample).await?;
    let rounds = if short { 200 } else { 1000 };
    let warmup = (rounds / 10).max(50);
    progress("NATS: publish → group member latency, herald then raw");
    let end_to_end = durable::end_to_end(&bus, rounds, warmup).await?;
    let stream_name = format!("{}_RAW", prefix.replace('.', "_"));
    let raw_end_to_end =
        raw_end_to_end(&js, &stream_name, &raw_subject, rounds, warmup, &sample).await?;
    let consume = if short { 2_000 } else { 20_000 };
    progress("NATS: raw pull consumer with acks");
    let raw_1 = raw_consume(&js, &stream_name, "raw1", consume / 10, true).await?;
    let raw_batched = raw_consume(&js, &stream_name, "raw", consume, false).await?;
    let drain = Drains::measure(
        if short { 2_000 } else { 20_000 },
        |_| {
            let config = config.clone();
            async move { Ok(Bus::new(NatsStore::open(config).await?)) }
        },
        (raw_1, raw_batched),
    )
    .await?;
    progress("NATS: command round trip to another store handle");
    let server = NatsStore::open(config.clone()).await?;
    let call = durable::call_latency(&Bus::new(server.clone()), &bus, rounds, rounds / 10).await;
    server.close().await;
    let call = call?;
    Ok(NatsFigures {
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
    let (js, sample, subject) = (js.clone(), sample.clone(), subject.to_owned());
    durable::rate(events, tasks, batch, move |n| {
        let (js, sample, subject) = (js.clone(), sample.clone(), subject.clone());
        async move {
            let mut acks = Vec::with_capacity(n);
            for _ in 0..n {
                let env = fresh(&sample);
                let (pairs, body) = herald::backend::headers::encode(&env)?;
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
            Ok(())
        }
    })
    .await
}

/// The raw consume ceiling: a durable pull consumer `name` on the raw
/// stream (which holds the raw publishes' messages) receiving `events`
/// messages and acking each with explicit acks — awaiting the server's
/// confirmation of each before the next (`one_by_one`, the member loop's
/// baseline), or as async-nats pulls and acks them, batches of [`BATCH`]
/// in flight: messages/s.
async fn raw_consume(
    js: &jetstream::Context,
    stream_name: &str,
    name: &str,
    events: usize,
    one_by_one: bool,
) -> Result<f64> {
    let all = jetstream::consumer::DeliverPolicy::All;
    let batch = if one_by_one { 1 } else { BATCH };
    let mut messages = raw_messages(js, stream_name, name, all, batch).await?;
    let start = std::time::Instant::now();
    for _ in 0..events {
        let message = next_message(&mut messages)
            .await
            .ok_or_else(|| Error::internal("the raw stream ran out"))?
            .map_err(|e| nats("pull a raw message", e))?;
        let acked = if one_by_one {
            message.double_ack().await
        } else {
            message.ack().await
        };
        acked.map_err(|e| Error::new(ErrorCode::Unavailable, format!("nats: ack: {e}")))?;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

/// The raw latency floor: a durable pull consumer on the raw stream that
/// takes only new messages, pulling one at a time and acking each
/// (awaited) as a member does, and one JetStream publish at a time, its ack
/// awaited; the sample is publish called → the consumer has the message.
async fn raw_end_to_end(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    rounds: usize,
    warmup: usize,
    sample: &Envelope,
) -> Result<Percentiles> {
    let new = jetstream::consumer::DeliverPolicy::New;
    let mut messages = raw_messages(js, stream_name, "rawlatency", new, 1).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        while let Some(Ok(message)) = next_message(&mut messages).await {
            let at = std::time::Instant::now();
            if message.double_ack().await.is_err() || tx.send(at).is_err() {
                break;
            }
        }
    });
    let event = fresh(sample);
    let (pairs, body) = herald::backend::headers::encode(&event)?;
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(name, value.as_str());
    }
    let mut samples = Vec::with_capacity(warmup + rounds);
    for _ in 0..warmup + rounds {
        let started = std::time::Instant::now();
        js.publish_with_headers(subject.to_owned(), headers.clone(), body.clone())
            .await
            .map_err(|e| nats("raw publish", e))?
            .await
            .map_err(|e| nats("raw publish ack", e))?;
        let at = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| Error::new(ErrorCode::Timeout, "the raw consumer got nothing"))?
            .ok_or_else(|| Error::internal("the raw consumer stopped"))?;
        samples.push(at.saturating_duration_since(started));
    }
    consumer.abort();
    Ok(Percentiles::of(samples, warmup))
}

/// The pull stream's next message; a missed idle heartbeat is skipped, as
/// herald's own leader does (a loop busy elsewhere for two heartbeats sees
/// one, and the stream goes on).
async fn next_message(
    messages: &mut jetstream::consumer::pull::Stream,
) -> Option<std::result::Result<jetstream::Message, jetstream::consumer::pull::MessagesError>> {
    use jetstream::consumer::pull::MessagesErrorKind;
    loop {
        match messages.next().await? {
            Err(e) if e.kind() == MessagesErrorKind::MissingHeartbeat => continue,
            other => return Some(other),
        }
    }
}

/// The messages of a new durable pull consumer `name` on the raw stream,
/// with explicit acks, from `deliver`, pulled `batch` at a time.
async fn raw_messages(
    js: &jetstream::Context,
    stream_name: &str,
    name: &str,
    deliver: jetstream::consumer::DeliverPolicy,
    batch: usize,
) -> Result<jetstream::consumer::pull::Stream> {
    use jetstream::consumer::{pull, AckPolicy};
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| nats("find the raw stream", e))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("make the raw consumer", e))?;
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| nats("pull from the raw consumer", e))
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

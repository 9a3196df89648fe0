//! Latency benchmarks: command dispatch, fan-out to 50 subscribers (next
//! to raw `tokio::sync::broadcast` to as many receivers, same run), envelope
//! validation and decode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::{Bus, Envelope, Limits, Message, Payload};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::stats::Percentiles;

/// `call` → handler → response, the handler running inline.
pub async fn dispatch(iterations: usize, warmup: usize) -> herald::Result<Percentiles> {
    let bus = Bus::memory();
    bus.handle_command("bench.echo", |req| async move { Ok(req.payload().clone()) })?;
    let payload = Payload::json(&serde_json::json!({"order": 42, "sku": "A-1"}))?;
    let mut samples = Vec::with_capacity(warmup + iterations);
    for _ in 0..warmup + iterations {
        let msg = Message::new("bench.echo", payload.clone());
        let start = Instant::now();
        let resp = bus.call(msg).await?;
        samples.push(start.elapsed());
        std::hint::black_box(resp);
    }
    Ok(Percentiles::of(samples, warmup))
}

/// Publish one event to `subscribers` subscribers; the sample is the time
/// from before `publish` to the moment the last subscriber has it.
pub async fn fan_out(
    subscribers: usize,
    iterations: usize,
    warmup: usize,
) -> herald::Result<Percentiles> {
    let bus = Bus::memory();
    let round = Arc::new(Round::default());
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = bus.subscribe_raw("bench.fanout").ephemeral().await?;
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                let at = Instant::now();
                d.ack().await.ok();
                round.arrived(at, subscribers);
            }
        }));
    }
    let payload = Payload::json(&serde_json::json!({"price": 101.5, "symbol": "HRLD"}))?;
    let samples = round
        .time(warmup + iterations, || async {
            bus.publish(Message::new("bench.fanout", payload.clone()))
                .await
                .map(drop)
        })
        .await;
    bus.close().await?;
    let samples = samples?;
    for t in tasks {
        t.await.ok();
    }
    Ok(Percentiles::of(samples, warmup))
}

/// The raw baseline of [`fan_out`]: one `send` on a
/// `tokio::sync::broadcast` channel to `receivers` receiver tasks; the
/// sample is the time from before `send` to the moment the last receiver
/// has the payload.
pub async fn broadcast_fan_out(receivers: usize, iterations: usize, warmup: usize) -> Percentiles {
    let (tx, _) = tokio::sync::broadcast::channel::<Payload>(16);
    let round = Arc::new(Round::default());
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let mut rx = tx.subscribe();
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(p) = rx.recv().await {
                let at = Instant::now();
                std::hint::black_box(p);
                round.arrived(at, receivers);
            }
        }));
    }
    let payload = Payload::json(&serde_json::json!({"price": 101.5, "symbol": "HRLD"}))
        .expect("a JSON payload");
    let samples = round
        .time(warmup + iterations, || {
            tx.send(payload.clone()).ok();
            std::future::ready(Ok(()))
        })
        .await
        .unwrap_or_default();
    drop(tx);
    for t in tasks {
        t.await.ok();
    }
    Percentiles::of(samples, warmup)
}

#[derive(Default)]
struct Round {
    count: AtomicUsize,
    last: Mutex<Option<Instant>>,
    done: Notify,
}

impl Round {
    fn arrived(&self, at: Instant, of: usize) {
        {
            let mut last = self.last.lock();
            if last.is_none_or(|l| at > l) {
                *last = Some(at);
            }
        }
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == of {
            self.count.store(0, Ordering::Release);
            self.done.notify_one();
        }
    }

    fn take_last(&self) -> Instant {
        self.last.lock().take().expect("every subscriber arrived")
    }

    /// `rounds` times: `send` one message, wait until every receiver has
    /// it; each sample is the time from before the send to the last
    /// arrival.
    async fn time<F, Fut>(&self, rounds: usize, mut send: F) -> herald::Result<Vec<Duration>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = herald::Result<()>>,
    {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let start = Instant::now();
            send().await?;
            done.await;
            samples.push(self.take_last().saturating_duration_since(start));
        }
        Ok(samples)
    }
}

/// Decode and validate a typical wire envelope (JSON bytes → `Envelope`).
pub fn validation(iterations: usize, warmup: usize) -> herald::Result<Percentiles> {
    let source = Arc::<str>::from("bench");
    let env = herald::Publish::into_envelope(
        Message::json(
            "orders.placed",
            &serde_json::json!({"id": 1234, "lines": [{"sku": "A-1", "qty": 2}], "total": 99.5}),
        )?
        .key("customer-42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        &source,
    )?;
    let bytes = env.to_json()?;
    let limits = Limits::default();
    let mut samples = Vec::with_capacity(warmup + iterations);
    for _ in 0..warmup + iterations {
        let start = Instant::now();
        let decoded = Envelope::from_json_with(std::hint::black_box(&bytes), &limits)?;
        samples.push(start.elapsed());
        std::hint::black_box(decoded);
    }
    Ok(Percentiles::of(samples, warmup))
}

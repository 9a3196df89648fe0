//! Handler runtime overhead: the same events consumed by a bare group
//! subscription loop (receive, ack) and by a handler with the full
//! middleware stack (circuit breaker, global and per-key rate limits,
//! dedupe, timeout, retry policy, observer, correlation scope, panic
//! catching). The difference per message is the runtime's cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::breaker::CircuitBreaker;
use herald::dedupe::{Dedupe, MemoryDedupe};
use herald::rate_limit::RateLimit;
use herald::retry::RetryPolicy;
use herald::{Bus, Envelope, HandlerObserver, HandlerOutcome, Message, Payload};
use serde::Serialize;
use tokio::sync::Notify;

/// What the comparison saw (the best of the rounds on each side).
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub events: u64,
    pub bare_us_per_event: f64,
    /// A handler without layers (the runtime alone).
    pub plain_handler_us_per_event: f64,
    /// A handler with every layer.
    pub handler_us_per_event: f64,
    /// Handler minus bare, per event.
    pub overhead_us: f64,
}

const BATCH: u64 = 500;
const ROUNDS: usize = 3;
const TOPIC: &str = "bench.handler";

/// Compare over `events` events, best of [`ROUNDS`] each.
pub async fn compare(events: u64) -> herald::Result<Overhead> {
    let mut bare = f64::INFINITY;
    let mut plain = f64::INFINITY;
    let mut handled = f64::INFINITY;
    for _ in 0..ROUNDS {
        bare = bare.min(bare_loop(events).await?);
        plain = plain.min(handle(events, false).await?);
        handled = handled.min(handle(events, true).await?);
    }
    let per = |d: f64| d * 1e6 / events as f64;
    Ok(Overhead {
        events,
        bare_us_per_event: per(bare),
        plain_handler_us_per_event: per(plain),
        handler_us_per_event: per(handled),
        overhead_us: per(handled) - per(bare),
    })
}

async fn publish_all(bus: &Bus, events: u64) -> herald::Result<()> {
    let mut n = 0;
    while n < events {
        let batch: Vec<_> = (n..(n + BATCH).min(events))
            .map(|i| Message::new(TOPIC, Payload::json(&i).expect("a number encodes")))
            .collect();
        n += batch.len() as u64;
        bus.publish(batch).await?;
    }
    Ok(())
}

/// Seconds for a group member to receive and ack `events` published meanwhile.
async fn bare_loop(events: u64) -> herald::Result<f64> {
    let bus = Bus::memory();
    let mut sub = bus.subscribe_raw(TOPIC).group("bare").await?;
    let began = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < events {
            match sub.next().await {
                Some(Ok(d)) => {
                    got += 1;
                    let _ = d.ack().await;
                }
                _ => break,
            }
        }
        got
    });
    publish_all(&bus, events).await?;
    let got = consumer.await.unwrap_or(0);
    check(got, events)?;
    Ok(began.elapsed().as_secs_f64())
}

struct Count(AtomicU64, u64, Notify);

impl HandlerObserver for Count {
    fn handled(&self, _: &Envelope, _: Duration, outcome: HandlerOutcome) {
        if outcome == HandlerOutcome::Acked && self.0.fetch_add(1, Ordering::Relaxed) + 1 == self.1
        {
            self.2.notify_one();
        }
    }
}

/// Seconds for a handler, with every layer or none, to handle `events`.
async fn handle(events: u64, layers: bool) -> herald::Result<f64> {
    let bus = Bus::memory();
    let count = Arc::new(Count(AtomicU64::new(0), events, Notify::new()));
    let mut builder = bus.handler(TOPIC).group("full").observe(count.clone());
    if layers {
        builder = builder
            .layer(CircuitBreaker::default())
            .layer(RateLimit::global(100_000, Duration::from_millis(1))?)
            .layer(RateLimit::per_key(100_000, Duration::from_millis(1))?)
            .layer(Dedupe::new(MemoryDedupe::default()))
            .timeout(Duration::from_secs(30))
            .retry(RetryPolicy::default());
    }
    let handler = builder.run(|_env| async { Ok(()) }).await?;
    let began = Instant::now();
    publish_all(&bus, events).await?;
    count.2.notified().await;
    let elapsed = began.elapsed().as_secs_f64();
    handler.shutdown(Duration::from_secs(5)).await;
    check(count.0.load(Ordering::Relaxed), events)?;
    Ok(elapsed)
}

fn check(got: u64, events: u64) -> herald::Result<()> {
    if got < events {
        return Err(herald::Error::internal(format!(
            "handler bench: {got} of {events} events handled"
        )));
    }
    Ok(())
}

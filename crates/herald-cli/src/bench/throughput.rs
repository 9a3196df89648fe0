//! Peak throughput of the bus next to raw `tokio::sync::broadcast`, same
//! payloads, same subscriber count, same run.

use std::time::Instant;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload};
use serde::Serialize;
use tokio::sync::broadcast;

/// Deliveries per second of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub subscribers: usize,
    pub events: u64,
    /// herald, one `publish` per event.
    pub herald_per_event: f64,
    /// herald, `publish` of batches of [`BATCH`] events.
    pub herald_batched: f64,
    /// Raw `tokio::sync::broadcast`, one `send` per event.
    pub broadcast: f64,
    /// Events the broadcast receivers lost to lag (0 when the baseline is
    /// valid; herald never drops).
    pub broadcast_lagged: u64,
    pub ratio_per_event: f64,
    pub ratio_batched: f64,
}

/// Events per `publish` in the batched run.
pub const BATCH: usize = 100;
/// Buffer per subscriber: room for the whole run, for herald and for
/// broadcast alike, so the raw baseline loses nothing to lag and neither side
/// waits on the other. [`Throughput::broadcast_lagged`] shows it held.
fn capacity(events: u64) -> usize {
    (events as usize).clamp(1, 1_000_000)
}

pub async fn compare(subscribers: usize, events: u64) -> herald::Result<Throughput> {
    let payload = Payload::json(&serde_json::json!({"price": 101.5, "symbol": "HRLD"}))?;
    let herald_per_event = herald_run(subscribers, events, 1, &payload, true).await?;
    let herald_batched = herald_run(subscribers, events, BATCH, &payload, true).await?;
    let (broadcast, broadcast_lagged) = broadcast_run(subscribers, events, &payload).await;
    Ok(Throughput {
        subscribers,
        events,
        herald_per_event,
        herald_batched,
        broadcast,
        broadcast_lagged,
        ratio_per_event: herald_per_event / broadcast,
        ratio_batched: herald_batched / broadcast,
    })
}

/// What herald's built-in instrumentation costs on the in-memory publish
/// path: one subscriber, one `publish` per event, on and off.
#[derive(Debug, Clone, Serialize)]
pub struct Instrumentation {
    pub events: u64,
    /// Deliveries/s with instrumentation on (the default), best of two.
    pub on: f64,
    /// Deliveries/s with it off, best of two.
    pub off: f64,
    /// `on / off`.
    pub ratio: f64,
}

pub async fn instrumentation(events: u64) -> herald::Result<Instrumentation> {
    let payload = Payload::json(&serde_json::json!({"price": 101.5, "symbol": "HRLD"}))?;
    let (mut on, mut off) = (0f64, 0f64);
    for _ in 0..2 {
        off = off.max(herald_run(1, events, 1, &payload, false).await?);
        on = on.max(herald_run(1, events, 1, &payload, true).await?);
    }
    Ok(Instrumentation {
        events,
        on,
        off,
        ratio: on / off,
    })
}

async fn herald_run(
    subscribers: usize,
    events: u64,
    batch: usize,
    payload: &Payload,
    instrument: bool,
) -> herald::Result<f64> {
    let bus = Bus::builder().instrument(instrument).build()?;
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = bus
            .subscribe_raw("bench.tput")
            .ephemeral()
            .buffer(capacity(events))
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < events {
                match sub.next().await {
                    Some(Ok(d)) => {
                        d.ack().await.ok();
                        n += 1;
                    }
                    _ => break,
                }
            }
            n
        }));
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < events {
        let n = (batch as u64).min(events - sent);
        let msgs: Vec<Message> = (0..n)
            .map(|_| Message::new("bench.tput", payload.clone()))
            .collect();
        bus.publish(msgs).await?;
        sent += n;
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await.unwrap_or(0);
    }
    let rate = delivered as f64 / start.elapsed().as_secs_f64();
    bus.close().await?;
    Ok(rate)
}

async fn broadcast_run(subscribers: usize, events: u64, payload: &Payload) -> (f64, u64) {
    let (tx, _) = broadcast::channel::<Payload>(capacity(events));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut rx = tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut lagged) = (0u64, 0u64);
            while n + lagged < events {
                match rx.recv().await {
                    Ok(p) => {
                        std::hint::black_box(p);
                        n += 1;
                    }
                    Err(broadcast::error::RecvError::Lagged(k)) => lagged += k,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            (n, lagged)
        }));
    }
    let start = Instant::now();
    for _ in 0..events {
        tx.send(payload.clone()).ok();
    }
    let (mut delivered, mut lagged) = (0, 0);
    for t in tasks {
        let (n, l) = t.await.unwrap_or((0, 0));
        delivered += n;
        lagged += l;
    }
    (delivered as f64 / start.elapsed().as_secs_f64(), lagged)
}

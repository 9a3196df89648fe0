//! What the durable-store benchmarks measure through herald the same way
//! on every store: publish throughput from concurrent tasks, and publish →
//! durable group member latency.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::{Bus, Envelope, Error, ErrorCode, Message, Result, StartPosition};

use super::sample::fresh;
use super::stats::Percentiles;

/// `tasks` tasks each doing its share of `events` as `batch(n)` calls of at
/// most `batch` events (`send` sends them and awaits their acks): events/s.
pub async fn rate<F, Fut>(events: usize, tasks: usize, batch: usize, send: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let per_task = events / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut left = per_task;
                while left > 0 {
                    let n = batch.min(left);
                    send(n).await?;
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

/// [`rate`] of publishes through herald, `batch` events per publish.
pub async fn herald_publishes(
    bus: &Bus,
    events: usize,
    tasks: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let (bus, sample) = (bus.clone(), sample.clone());
    rate(events, tasks, batch, move |n| {
        let (bus, sample) = (bus.clone(), sample.clone());
        async move {
            bus.publish((0..n).map(|_| fresh(&sample)).collect::<Vec<_>>())
                .await
                .map(|_| ())
        }
    })
    .await
}

/// One publish at a time; from the call to a durable group member having it.
pub async fn end_to_end(bus: &Bus, rounds: usize, warmup: usize) -> Result<Percentiles> {
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

/// Command round trips across processes: a handler on `server` (a store of
/// its own, as another process would have) called from `client`, one call
/// at a time.
pub async fn call_latency(
    server: &Bus,
    client: &Bus,
    rounds: usize,
    warmup: usize,
) -> Result<Percentiles> {
    let _handle = server.handle_command("bench.double", |req| async move {
        let n: u64 = req.decode()?;
        herald::Payload::json(&(n * 2))
    })?;
    // The handler is reachable once its consumer has joined.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.call(Message::json("bench.double", &1u64)?).await {
            Ok(_) => break,
            Err(e) if e.code() == ErrorCode::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e),
        }
    }
    let mut samples = Vec::with_capacity(warmup + rounds);
    for i in 0..(warmup + rounds) as u64 {
        let started = Instant::now();
        let answer: u64 = client
            .call(Message::json("bench.double", &i)?)
            .await?
            .decode()?;
        samples.push(started.elapsed());
        if answer != i * 2 {
            return Err(Error::internal("a wrong answer"));
        }
    }
    Ok(Percentiles::of(samples, warmup))
}

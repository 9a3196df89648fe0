//! How fast a durable consumer group drains a backlog, on any store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, Error, Message, Result};

/// Publish `events` (keyless, in batches of `batch`), then time `members`
/// members of one group receiving and acking them all: events/s.
pub async fn group_drain(bus: &Bus, events: usize, members: usize, batch: usize) -> Result<f64> {
    let mut subs = Vec::new();
    for _ in 0..members {
        subs.push(bus.subscribe_raw("bench.drain").group("drain").await?);
    }
    for chunk in 0..events.div_ceil(batch) {
        let n = batch.min(events - chunk * batch);
        bus.publish(
            (0..n)
                .map(|i| Message::json("bench.drain", &i))
                .collect::<Result<Vec<_>>>()?,
        )
        .await?;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            let done = done.clone();
            tokio::spawn(async move {
                while done.load(Ordering::Acquire) < events {
                    let next = tokio::time::timeout(
                        Duration::from_millis(500),
                        futures_util::StreamExt::next(&mut sub),
                    );
                    match next.await {
                        Ok(Some(Ok(d))) => {
                            d.ack().await?;
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(_) => break,
                        Err(_) => continue,
                    }
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| Error::internal(e.to_string()))??;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

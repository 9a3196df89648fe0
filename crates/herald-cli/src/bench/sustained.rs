//! Sustained rate: publish at a fixed rate for a while and check that every
//! subscriber got every event, gap-free and in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::{Bus, Message, Payload};
use serde::Serialize;
use tokio::sync::watch;

/// What one sustained run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Sustained {
    pub target_rate: u64,
    pub seconds: f64,
    pub subscribers: usize,
    pub published: u64,
    /// Events some subscriber never received (summed over subscribers).
    pub lost: u64,
    /// Deliveries whose `seq` was not above the previous one.
    pub inversions: u64,
    /// Publishes that failed (backpressure or otherwise).
    pub publish_errors: u64,
    pub achieved_rate: f64,
}

impl Sustained {
    /// Kept the target rate (within 5%) with nothing lost or reordered.
    pub fn held(&self) -> bool {
        self.lost == 0
            && self.inversions == 0
            && self.publish_errors == 0
            && self.achieved_rate >= 0.95 * self.target_rate as f64
    }
}

/// How long subscribers may take to drain after the publisher stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Publish `rate` events/s to one topic for `duration`, with `subscribers`
/// subscribers checking order.
pub async fn run(rate: u64, duration: Duration, subscribers: usize) -> herald::Result<Sustained> {
    let bus = Bus::memory();
    let (progress_tx, progress_rx) = watch::channel(0u64);
    let progress_tx = Arc::new(progress_tx);
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = bus.subscribe_raw("bench.sustained").ephemeral().await?;
        let target = progress_rx.clone();
        tasks.push(tokio::spawn(async move {
            let (mut received, mut last, mut inversions) = (0u64, 0u64, 0u64);
            loop {
                let next = tokio::time::timeout(DRAIN, sub.next()).await;
                let Ok(Some(Ok(d))) = next else { break };
                let seq = d.seq().unwrap_or(0);
                if seq <= last {
                    inversions += 1;
                }
                last = seq;
                received += 1;
                d.ack().await.ok();
                let goal = *target.borrow();
                if goal != 0 && received >= goal {
                    break;
                }
            }
            (received, inversions)
        }));
    }
    let payload = Payload::json(&serde_json::json!({"reading": 21.5, "sensor": "s-1"}))?;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let (mut published, mut errors) = (0u64, 0u64);
    loop {
        ticker.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
        while published + errors < due {
            match bus
                .publish(Message::new("bench.sustained", payload.clone()))
                .await
            {
                Ok(_) => published += 1,
                Err(_) => errors += 1,
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress_tx.send_replace(published.max(1));
    let (mut lost, mut inversions) = (0, 0);
    for t in tasks {
        let (received, inv) = t.await.unwrap_or((0, 0));
        lost += published.saturating_sub(received);
        inversions += inv;
    }
    bus.close().await?;
    Ok(Sustained {
        target_rate: rate,
        seconds,
        subscribers,
        published,
        lost,
        inversions,
        publish_errors: errors,
        achieved_rate: published as f64 / seconds,
    })
}

/// The highest rate from `ladder` that holds for `probe`, each probed once,
/// stopping at the first that does not.
pub async fn highest(
    ladder: &[u64],
    probe: Duration,
    subscribers: usize,
) -> herald::Result<Option<Sustained>> {
    let mut best = None;
    for &rate in ladder {
        let r = run(rate, probe, subscribers).await?;
        if !r.held() {
            break;
        }
        best = Some(r);
    }
    Ok(best)
}

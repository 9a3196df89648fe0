//! Helpers shared by the scenarios.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use herald::{Delivery, Envelope, HandlerObserver, HandlerOutcome, Message, Payload, Result};
use tokio::sync::watch;

/// Longest wait for a delivery that must come.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// The next item of `sub`, failing the scenario if the stream ends, errs or
/// stays silent for [`DELIVERY_WAIT`].
pub async fn recv<S, T>(sub: &mut S) -> T
where
    S: Stream<Item = Result<T>> + Unpin,
{
    match tokio::time::timeout(DELIVERY_WAIT, sub.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("subscription yielded an error: {e}"),
        Ok(None) => panic!("subscription ended early"),
        Err(_) => panic!("no delivery within {DELIVERY_WAIT:?}"),
    }
}

/// Receive `n` deliveries, acking each, and return them as (`seq`, payload `n`).
pub async fn collect<S>(sub: &mut S, n: usize) -> Vec<(u64, u64)>
where
    S: Stream<Item = Result<Delivery>> + Unpin,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = recv(sub).await;
        out.push((seq(&d), number(&d)));
        d.ack().await.expect("ack");
    }
    out
}

/// Receive `n` deliveries, acking each, and return their payload numbers.
pub async fn numbers<S>(sub: &mut S, n: usize) -> Vec<u64>
where
    S: Stream<Item = Result<Delivery>> + Unpin,
{
    collect(sub, n).await.into_iter().map(|g| g.1).collect()
}

/// Receive `n` deliveries, acking each, and return their `seq`s.
pub async fn seqs<S>(sub: &mut S, n: usize) -> Vec<u64>
where
    S: Stream<Item = Result<Delivery>> + Unpin,
{
    collect(sub, n).await.into_iter().map(|g| g.0).collect()
}

/// A delivery's `seq`, which a delivered event always has.
pub fn seq(d: &Delivery) -> u64 {
    d.seq().expect("a delivered event has a seq")
}

/// The `n` of a payload made by [`numbered`].
pub fn number(d: &Delivery) -> u64 {
    d.decode::<serde_json::Value>().expect("json payload")["n"]
        .as_u64()
        .expect("payload has n")
}

/// A message on `topic` carrying `{"n": n}`.
pub fn numbered(topic: &str, n: u64) -> Message {
    Message::new(
        topic.to_string(),
        Payload::json(&serde_json::json!({ "n": n })).expect("json"),
    )
}

/// Assert `seqs` is exactly `1..=n` in order.
pub fn assert_gap_free(what: &str, seqs: &[u64], n: u64) {
    let expected: Vec<u64> = (1..=n).collect();
    if seqs != expected.as_slice() {
        let first_bad = seqs
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(seqs.len().min(expected.len()));
        panic!(
            "{what}: expected seq 1..={n} in order, got {} items, first difference at index {first_bad}: {:?}",
            seqs.len(),
            seqs.get(first_bad)
        );
    }
}

/// Counts observed outcomes on a watch channel, to wait on without sleeping.
#[derive(Clone)]
pub struct Tally(Arc<watch::Sender<HashMap<&'static str, u64>>>);

impl Tally {
    pub fn new() -> Self {
        Tally(Arc::new(watch::Sender::new(HashMap::new())))
    }

    pub async fn until(&self, what: &'static str, n: u64) {
        let mut rx = self.0.subscribe();
        let reached = rx.wait_for(|t| t.get(what).copied().unwrap_or(0) >= n);
        tokio::time::timeout(DELIVERY_WAIT, reached)
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} `{what}` within {DELIVERY_WAIT:?}"))
            .expect("tally");
    }
}

impl HandlerObserver for Tally {
    fn handled(&self, _envelope: &Envelope, _elapsed: Duration, outcome: HandlerOutcome) {
        let what = match outcome {
            HandlerOutcome::Acked => "acked",
            HandlerOutcome::Retried => "retried",
            HandlerOutcome::DeadLettered => "dead",
            HandlerOutcome::Deferred => "deferred",
        };
        self.0.send_modify(|t| *t.entry(what).or_default() += 1);
    }
}

/// Poll `read` until it gives `Some`, failing the scenario after
/// [`DELIVERY_WAIT`]: for state a store settles in the background (a dead
/// letter written after a detached settlement, an event a forwarder
/// copies), which no stream announces.
pub async fn eventually<T, F, Fut>(what: &str, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    loop {
        if let Some(found) = read().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within {DELIVERY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The dead letters of `bus` once there are at least `n`.
pub async fn dead_letters_until(bus: &herald::Bus, n: usize) -> Vec<herald::DeadLetter> {
    eventually("dead letters", || async {
        let dead = bus.dead_letters().await.unwrap();
        (dead.len() >= n).then_some(dead)
    })
    .await
}

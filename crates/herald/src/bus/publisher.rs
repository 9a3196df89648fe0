//! The publish path between [`Bus::publish`](crate::Bus::publish) and the
//! transport: auto-batching, retry and the circuit breaker.
//!
//! Owns [`Batching`] (coalesce publishes that arrive within a window into
//! one transport append, each caller still getting its own `seq`s or error)
//! and the guard of DESIGN.md §6: transient transport errors (`UNAVAILABLE`,
//! `TIMEOUT`) are retried by a [`RetryPolicy`], and an open
//! [`CircuitBreaker`] fails a publish fast with `UNAVAILABLE`. Retrying is
//! safe because a retried batch keeps its envelope ids, which the
//! transport's idempotency-key dedupe recognises. Validation happens before
//! this, in the bus; this module never sees a bad envelope.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::backend::transport::DynTransport;
use crate::config::in_range;
use crate::config::RetryPolicy;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::runtime::breaker::CircuitBreaker;

/// Auto-batching of publishes: publishes that arrive while a batch is open
/// go to the transport as one append.
///
/// ```
/// use std::time::Duration;
/// use herald::{Bus, Message};
/// use herald::publisher::Batching;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::builder()
///     .batching(Batching::default().max_wait(Duration::from_millis(2)).max_events(500))
///     .build()?;
/// // Still one publish for any arity; each caller gets its own seqs.
/// let (a, b) = tokio::join!(
///     bus.publish(Message::json("a.b", &1)?),
///     bus.publish(Message::json("a.b", &2)?),
/// );
/// assert_ne!(a?, b?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    max_wait: Duration,
    max_events: usize,
}

/// How long a batch stays open for more publishes, by default.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_millis(1);
/// Events that close a batch at once, by default.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 1000;

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_wait: DEFAULT_BATCH_MAX_WAIT,
            max_events: DEFAULT_BATCH_MAX_EVENTS,
        }
    }
}

impl Batching {
    /// Keep a batch open up to `wait` after its first publish, 0–1 s (0:
    /// take only what is already waiting).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Close a batch once it holds `n` events, 1–100,000.
    pub fn max_events(mut self, n: usize) -> Self {
        self.max_events = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        in_range("batch max_wait", self.max_wait.as_secs_f64(), 0.0, 1.0)?;
        in_range("batch max_events", self.max_events, 1, 100_000)
    }
}

type Reply = oneshot::Sender<Result<Vec<u64>>>;
/// The batcher task's inbox: each caller's batch and where to answer.
type Inbox = mpsc::Sender<(Vec<Envelope>, Reply)>;

/// Where a validated batch goes: straight to the transport or through the
/// batcher, guarded by retry and breaker.
pub(crate) struct Publisher {
    transport: Arc<dyn DynTransport>,
    batching: Option<Batching>,
    /// The batcher task's inbox, started by the first publish (a bus may be
    /// built outside a runtime) and again if its task has stopped (its
    /// runtime shut down).
    batcher: Mutex<Option<Inbox>>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
}

impl Publisher {
    pub(crate) fn new(
        transport: Arc<dyn DynTransport>,
        batching: Option<Batching>,
        retry: Option<RetryPolicy>,
        breaker: Option<CircuitBreaker>,
    ) -> Publisher {
        Publisher {
            transport,
            batching,
            batcher: Mutex::new(None),
            retry,
            breaker,
        }
    }

    /// The same options in front of `transport`.
    pub(crate) fn on(&self, transport: Arc<dyn DynTransport>) -> Publisher {
        Publisher::new(transport, self.batching, self.retry, self.breaker.clone())
    }

    /// Append `batch` (validated, non-empty), returning each event's `seq`.
    pub(crate) async fn append(&self, mut batch: Vec<Envelope>) -> Result<Vec<u64>> {
        if self.retry.is_none() && self.breaker.is_none() {
            return self.once(batch).await;
        }
        let mut attempt = 0;
        loop {
            let permit = match &self.breaker {
                Some(b) => Some(b.try_acquire().map_err(|wait| {
                    // UNAVAILABLE to a caller; a handler publishing effects
                    // defers its message instead of spending an attempt.
                    Error::defer(
                        wait,
                        format!("publish circuit breaker is open; retry in {wait:?}"),
                    )
                })?),
                None => None,
            };
            let again = self.retry.is_some().then(|| batch.clone());
            let result = self.once(batch).await;
            let transient = matches!(&result, Err(e) if is_transient(e));
            if let Some(permit) = permit {
                if transient {
                    permit.failed();
                } else {
                    permit.succeeded();
                }
            }
            attempt += 1;
            match (result, self.retry, again) {
                (Err(_), Some(policy), Some(again))
                    if transient && policy.allows(attempt, Duration::ZERO) =>
                {
                    tokio::time::sleep(policy.delay(attempt - 1)).await;
                    batch = again;
                }
                (result, ..) => return result,
            }
        }
    }

    async fn once(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        let Some(options) = self.batching else {
            return self.transport.publish(batch).await;
        };
        let batcher = {
            let mut slot = self.batcher.lock();
            match &*slot {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(options.max_events.max(64));
                    tokio::spawn(coalesce(self.transport.clone(), rx, options));
                    *slot = Some(tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        if batcher.send((batch, reply)).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn is_transient(e: &Error) -> bool {
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Timeout)
}

fn stopped() -> Error {
    Error::new(ErrorCode::Unavailable, "the publish batcher has stopped")
}

/// The batcher task: gather publishes for up to `max_wait` or `max_events`,
/// append them together, and answer each caller with its own part.
async fn coalesce(
    transport: Arc<dyn DynTransport>,
    mut requests: mpsc::Receiver<(Vec<Envelope>, Reply)>,
    options: Batching,
) {
    while let Some(first) = requests.recv().await {
        let mut count = first.0.len();
        let mut waiting = vec![first];
        let deadline = tokio::time::Instant::now() + options.max_wait;
        while count < options.max_events {
            let next = if options.max_wait.is_zero() {
                requests.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, requests.recv())
                    .await
                    .ok()
                    .flatten()
            };
            let Some(request) = next else { break };
            count += request.0.len();
            waiting.push(request);
        }
        append_together(&*transport, waiting, count).await;
    }
}

/// One append for all of `waiting`. If it fails for a reason one caller's
/// events could cause, each caller's batch is appended alone, so no caller
/// fails for another's; a transient failure (the transport is down or slow)
/// is every caller's answer at once, left to their retry policy.
async fn append_together(
    transport: &dyn DynTransport,
    waiting: Vec<(Vec<Envelope>, Reply)>,
    count: usize,
) {
    if waiting.len() == 1 {
        let (batch, reply) = waiting.into_iter().next().expect("one request");
        let _ = reply.send(transport.publish(batch).await);
        return;
    }
    let mut sizes = Vec::with_capacity(waiting.len());
    let mut all = Vec::with_capacity(count);
    let mut replies = Vec::with_capacity(waiting.len());
    for (batch, reply) in waiting {
        sizes.push(batch.len());
        replies.push(reply);
        all.extend(batch);
    }
    let retry_alone = all.clone();
    match transport.publish(all).await {
        Ok(seqs) => {
            let mut seqs = seqs.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(seqs.by_ref().take(n).collect()));
            }
        }
        Err(e) if is_transient(&e) || e.code() == ErrorCode::Backpressure => {
            for reply in replies {
                let _ = reply.send(Err(Error::new(e.code(), e.message())));
            }
        }
        Err(_) => {
            let mut events = retry_alone.into_iter();
            for (n, reply) in sizes.into_iter().zip(replies) {
                let batch: Vec<Envelope> = events.by_ref().take(n).collect();
                let _ = reply.send(transport.publish(batch).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryTransport;
    use crate::testing::Faults;
    use crate::{Bus, Message};

    fn msg(n: u64) -> Message {
        Message::json("pub.t", &n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_publishes_coalesce_and_each_caller_gets_its_seqs() {
        let faults = Faults::new();
        let bus = Bus::builder()
            .transport(faults.wrap(MemoryTransport::default()))
            .batching(
                Batching::default()
                    .max_wait(Duration::from_millis(5))
                    .max_events(50),
            )
            .build()
            .unwrap();
        let publishes = (0..100).map(|i| {
            let bus = bus.clone();
            async move {
                let batch = vec![msg(2 * i), msg(2 * i + 1)];
                bus.publish(batch).await.unwrap()
            }
        });
        let results = futures_util::future::join_all(publishes).await;
        let mut all: Vec<u64> = results.iter().flatten().copied().collect();
        for seqs in &results {
            assert_eq!(seqs.len(), 2);
            assert_eq!(seqs[1], seqs[0] + 1, "a caller's batch stays together");
        }
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<_>>());
        let n = faults.publishes();
        assert!(n <= 8, "200 events in 25-event batches: {n} appends");
    }

    async fn ten_batched_publishes_after_one_failure(
        code: ErrorCode,
    ) -> (Bus, Vec<Result<Vec<u64>>>) {
        let faults = Faults::new();
        let bus = Bus::builder()
            .transport(faults.wrap(MemoryTransport::default()))
            .batching(Batching::default().max_wait(Duration::from_millis(20)))
            .build()
            .unwrap();
        faults.fail_publishes(1, code);
        let publishes = (0..10).map(|i| {
            let bus = bus.clone();
            async move { bus.publish(msg(i)).await }
        });
        let results = futures_util::future::join_all(publishes).await;
        (bus, results)
    }

    #[tokio::test]
    async fn a_batch_failed_by_its_content_is_retried_per_caller() {
        let (bus, results) = ten_batched_publishes_after_one_failure(ErrorCode::Internal).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert!(failed <= 1, "at most a caller alone in the failed append");
        let appended = bus.last_seq("pub.t").await.unwrap();
        assert_eq!(appended, Some(10 - failed as u64));
    }

    #[tokio::test]
    async fn a_transient_batch_failure_is_every_callers_answer_at_once() {
        let (bus, results) = ten_batched_publishes_after_one_failure(ErrorCode::Unavailable).await;
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(!failed.is_empty());
        assert!(failed.iter().all(|e| e.code() == ErrorCode::Unavailable));
        let appended = bus.last_seq("pub.t").await.unwrap();
        assert_eq!(appended.unwrap_or(0), 10 - failed.len() as u64);
    }

    #[test]
    fn the_batcher_restarts_in_a_new_runtime() {
        let bus = Bus::builder()
            .batching(Batching::default())
            .build()
            .unwrap();
        for expected in [1, 2] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let seqs = rt.block_on(bus.publish(msg(expected))).unwrap();
            assert_eq!(seqs, [expected]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_publish_failures_are_retried() {
        let faults = Faults::new();
        let policy = RetryPolicy::default()
            .base(Duration::from_millis(10))
            .max_attempts(3);
        let bus = Bus::builder()
            .transport(faults.wrap(MemoryTransport::default()))
            .publish_retry(policy)
            .build()
            .unwrap();
        faults.fail_publishes(3, ErrorCode::Unavailable);
        assert_eq!(bus.publish(msg(1)).await.unwrap(), [1]);
        faults.fail_publishes(4, ErrorCode::Timeout);
        let err = bus.publish(msg(2)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Timeout, "gives up after 3 retries");
        faults.fail_publishes(1, ErrorCode::Validation);
        let err = bus.publish(msg(3)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation, "not transient: no retry");
        assert_eq!(bus.publish(msg(4)).await.unwrap(), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_publish_breaker_fails_fast() {
        let faults = Faults::new();
        let breaker = CircuitBreaker::builder()
            .threshold(2)
            .reset_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let bus = Bus::builder()
            .transport(faults.wrap(MemoryTransport::default()))
            .publish_breaker(breaker.clone())
            .build()
            .unwrap();
        faults.fail_publishes(3, ErrorCode::Unavailable);
        for _ in 0..2 {
            assert!(bus.publish(msg(1)).await.is_err());
        }
        let err = bus.publish(msg(1)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(err.message().contains("breaker is open"), "{err}");
        tokio::time::advance(Duration::from_secs(5)).await;
        // The trial meets the third armed failure and reopens; the next trial succeeds.
        assert!(bus.publish(msg(1)).await.is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(bus.publish(msg(1)).await.unwrap(), [1]);
        assert_eq!(
            breaker.state(),
            crate::runtime::breaker::BreakerState::Closed
        );
    }
}

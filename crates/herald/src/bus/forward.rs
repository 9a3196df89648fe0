//! Forwarding: moving one bus's events to another transport, at least once.
//!
//! Owns [`Forwarder`]: a consumer group on the source bus (a store's log,
//! filled by its outbox) whose handler publishes each event, as it is — same
//! id, same idempotency key, same headers — to the target bus, and acks the
//! source only once the target has it. A crash between the two forwards the
//! event again, and the target's dedupe by idempotency key drops the copy
//! (within its dedupe window). The group's committed offset lets it resume
//! after a restart of the source; a target that is down or slow fails with a
//! retryable error, which defers the event (no attempt counted, nothing
//! dead-lettered) and, repeated, opens a circuit breaker that stops calling
//! the target until it may be back. An event the target refuses for good
//! (too large for its limits, say) is dead-lettered in the source group,
//! with source `forwarder`.
//!
//! It does not own delivery, retries or dead letters (the handler runtime's)
//! nor dedupe (the target's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::handler::{Handler, HandlerReport};
use crate::bus::Bus;
use crate::model::dead_letter::FailureSource;
use crate::model::error::{Error, Result};
use crate::model::start::StartPosition;
use crate::runtime::breaker::CircuitBreaker;

/// The default consumer group of a forwarder.
pub const DEFAULT_GROUP: &str = "herald.forward";

/// Forwards the events of a source bus to a target bus; see the module.
///
/// ```
/// use std::time::Duration;
/// use herald::forward::Forwarder;
/// use herald::{Bus, Message};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let (outbox, broker) = (Bus::memory(), Bus::memory());
/// let forwarding = Forwarder::new(&outbox, &broker).topics("orders.>").run().await?;
/// outbox.publish(Message::json("orders.placed", &1)?).await?;
/// # while broker.last_seq("orders.placed").await? != Some(1) { tokio::task::yield_now().await; }
/// assert_eq!(broker.last_seq("orders.placed").await?, Some(1));
/// forwarding.shutdown(Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[must_use = "a forwarder does nothing until `run`"]
pub struct Forwarder {
    source: Bus,
    target: Bus,
    pattern: String,
    group: String,
    start: StartPosition,
    concurrency: usize,
    ack_wait: Option<Duration>,
    retry_after: Duration,
    breaker: Option<CircuitBreaker>,
}

impl Forwarder {
    /// Forward every event of `source` (from its earliest) to `target`.
    pub fn new(source: &Bus, target: &Bus) -> Forwarder {
        Forwarder {
            source: source.clone(),
            target: target.clone(),
            pattern: ">".to_owned(),
            group: DEFAULT_GROUP.to_owned(),
            start: StartPosition::Earliest,
            concurrency: 1,
            ack_wait: None,
            retry_after: Duration::from_millis(500),
            breaker: None,
        }
    }

    /// Forward only the topics matching `pattern` (default `>`: all).
    pub fn topics(mut self, pattern: &str) -> Self {
        self.pattern = pattern.to_owned();
        self
    }

    /// The source consumer group that holds the forwarder's position
    /// (default [`DEFAULT_GROUP`]); forwarders with the same group share
    /// the work, with different groups each forward everything.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = name.into();
        self
    }

    /// Where to start reading, as [`StartPosition`] says: an existing group keeps its position.
    /// Default: [`StartPosition::Earliest`].
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Events forwarded at once (default 1). Events of one key always go in
    /// order; with more than one, keyless events may overtake each other.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How long the source waits for an event's ack before handing it out
    /// again (default: the source's ack wait).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// How long an event waits after the target failed it (default 500 ms).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = delay;
        self
    }

    /// The breaker guarding the target (default: opens after 5 failures in
    /// a row, tries again after 2 s).
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Start forwarding in the background.
    pub async fn run(self) -> Result<Forwarding> {
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::builder()
                .threshold(5)
                .reset_timeout(Duration::from_secs(2))
                .build()?,
        };
        let forwarded = Arc::new(AtomicU64::new(0));
        let (target, count, guard) = (self.target, forwarded.clone(), breaker.clone());
        let retry_after = self.retry_after;
        let mut handler = self
            .source
            .handler(&self.pattern)
            .group(self.group)
            .start(self.start)
            .concurrency(self.concurrency)
            .failure_source(FailureSource::Forwarder);
        if let Some(wait) = self.ack_wait {
            handler = handler.ack_wait(wait);
        }
        let handler = handler
            .run(move |envelope| {
                let (target, count, guard) = (target.clone(), count.clone(), guard.clone());
                async move {
                    let permit = guard.try_acquire().map_err(|wait| {
                        Error::defer(wait, "the forwarding target is unavailable (breaker open)")
                    })?;
                    match target.publish((*envelope).clone()).await {
                        Ok(_) => {
                            permit.succeeded();
                            count.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(e) if e.retryable() => {
                            permit.failed();
                            Err(Error::defer(
                                retry_after,
                                format!("the forwarding target failed: {e}"),
                            ))
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(Forwarding {
            handler,
            forwarded,
            breaker,
        })
    }
}

/// A running [`Forwarder`].
pub struct Forwarding {
    handler: Handler,
    forwarded: Arc<AtomicU64>,
    breaker: CircuitBreaker,
}

impl Forwarding {
    /// Events the target accepted so far (copies included).
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// The breaker guarding the target.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Stop taking events, let those in flight finish within `deadline`;
    /// the rest are forwarded after the next start.
    pub async fn shutdown(self, deadline: Duration) -> HandlerReport {
        self.handler.shutdown(deadline).await
    }
}

//! One delivered message and how it is settled.
//!
//! Owns [`Delivery`] (an envelope handed to a subscriber plus the right to
//! settle it), the [`Outcome`] of settling, and the [`Settle`] seam through
//! which a transport learns the outcome. Redelivery, dead-lettering and offset
//! commits are the transport's business; this module only carries the verdict.
//!
//! Settlement rules (DESIGN.md §4.6):
//! - [`Delivery::ack`]: done; a durable transport commits the offset.
//! - [`Delivery::nack`]: redeliver, optionally after a delay, with `attempt`
//!   incremented; after `max_deliver` attempts the message is dead-lettered.
//! - [`Delivery::term`]: a terminal failure, dead-lettered at once.
//! - [`Delivery::defer`]: not now; redeliver after a delay, `attempt`
//!   unchanged (it does not count toward `max_deliver`).
//! - Dropping a delivery without settling it is a `nack` without delay, so an
//!   event is never lost because a consumer forgot it (it comes back at most
//!   `max_deliver` times and then sits in the dead-letter store).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::error::{ErrorCode, Result};

/// A boxed, sendable future, as transports return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Processed.
    Ack,
    /// Not processed: redeliver after `delay` (at once when `None`).
    Nack {
        /// Wait before redelivery.
        delay: Option<Duration>,
        /// Why, kept with the dead letter if attempts run out.
        reason: Option<String>,
    },
    /// Not processed, and not a failure either: redeliver after `delay`
    /// without counting an attempt (an open circuit breaker, a paused
    /// consumer).
    Defer {
        /// Wait before redelivery.
        delay: Duration,
    },
    /// Will never succeed: dead-letter now.
    Term {
        /// The failure's code.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
}

/// The transport side of settling: told once per delivery.
pub trait Settle: Send + Sync + 'static {
    /// Apply `outcome` to `envelope`. Return `None` when done synchronously, or a
    /// future that completes when the outcome is durable.
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>>;

    /// Ack `envelope` and append `effects` in one transaction, so both
    /// happen or neither does. A transport without transactions hands the
    /// effects back (`Err`), and the caller publishes them before acking.
    #[allow(clippy::type_complexity)]
    fn ack_with_effects(
        &self,
        envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        let _ = envelope;
        Err(effects)
    }
}

/// A message delivered to a subscriber. Read it through [`envelope`](Self::envelope)
/// (or `Deref`), then settle it once.
#[must_use = "an unsettled delivery is nacked when dropped"]
pub struct Delivery {
    envelope: Arc<Envelope>,
    settle: Option<Arc<dyn Settle>>,
}

impl Delivery {
    /// A delivery of `envelope` whose outcome goes to `settle`.
    pub fn new(envelope: Arc<Envelope>, settle: Arc<dyn Settle>) -> Self {
        Delivery {
            envelope,
            settle: Some(settle),
        }
    }

    /// The delivered envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The delivered envelope, shared.
    pub fn shared_envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    /// Acknowledge: the message is processed.
    pub async fn ack(self) -> Result<()> {
        self.finish(Outcome::Ack).await
    }

    /// Negative-acknowledge: redeliver at once.
    pub async fn nack(self) -> Result<()> {
        self.finish(Outcome::Nack {
            delay: None,
            reason: None,
        })
        .await
    }

    /// Negative-acknowledge: redeliver after `delay`.
    pub async fn nack_after(self, delay: Duration) -> Result<()> {
        self.finish(Outcome::Nack {
            delay: Some(delay),
            reason: None,
        })
        .await
    }

    /// Not now: redeliver after `delay` without counting an attempt.
    pub async fn defer(self, delay: Duration) -> Result<()> {
        self.finish(Outcome::Defer { delay }).await
    }

    /// Terminal failure: dead-letter now with `code` and `reason`.
    pub async fn term(self, code: ErrorCode, reason: impl Into<String>) -> Result<()> {
        self.finish(Outcome::Term {
            code,
            reason: reason.into(),
        })
        .await
    }

    /// Ack and publish `effects` (prepared by [`Bus::prepare`](crate::Bus::prepare))
    /// in one transaction, where the transport has transactions (SQLite,
    /// PostgreSQL): the returned future completes when both are durable. A
    /// transport without them gives the delivery and the effects back; then
    /// publish the effects with idempotency keys derived from this message
    /// and ack after (the handler runtime does this).
    #[allow(clippy::type_complexity)]
    pub fn ack_with_effects(
        mut self,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, (Delivery, Vec<Envelope>)> {
        let Some(settle) = self.settle.take() else {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        };
        match settle.ack_with_effects(&self.envelope, effects) {
            Ok(fut) => Ok(fut),
            Err(effects) => {
                self.settle = Some(settle);
                Err((self, effects))
            }
        }
    }

    /// Settle with an explicit outcome.
    pub async fn finish(mut self, outcome: Outcome) -> Result<()> {
        match self.settle.take() {
            Some(s) => match s.settle(&self.envelope, outcome) {
                Some(fut) => fut.await,
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Delivery {
    /// Settle without waiting: a transport that settles asynchronously finishes
    /// in a background task.
    pub(crate) fn settle_detached(mut self, outcome: Outcome) {
        if let Some(s) = self.settle.take() {
            spawn_settle(s.settle(&self.envelope, outcome));
        }
    }
}

/// Settlements running in background tasks (a dropped delivery's nack, a
/// detached settle), process-wide, and a wake-up for when they reach zero:
/// [`Bus::close`](crate::Bus::close) waits for them, so work a stopped
/// handler abandoned is handed back before its store closes instead of
/// waiting out its ack deadline.
static DETACHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static DETACHED_DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

pub(crate) fn spawn_settle(fut: Option<BoxFuture<'static, Result<()>>>) {
    use std::sync::atomic::Ordering;
    if let Some(fut) = fut {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            DETACHED.fetch_add(1, Ordering::SeqCst);
            rt.spawn(async move {
                let _ = fut.await;
                if DETACHED.fetch_sub(1, Ordering::SeqCst) == 1 {
                    DETACHED_DONE.notify_waiters();
                }
            });
        }
    }
}

/// Wait until no detached settlement is running, or `deadline` passes.
pub(crate) async fn detached_settled(deadline: std::time::Duration) {
    use std::sync::atomic::Ordering;
    let _ = tokio::time::timeout(deadline, async {
        loop {
            let done = DETACHED_DONE.notified();
            if DETACHED.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    })
    .await;
}

impl std::ops::Deref for Delivery {
    type Target = Envelope;
    fn deref(&self) -> &Envelope {
        &self.envelope
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", self.envelope.topic())
            .field("seq", &self.envelope.seq())
            .field("attempt", &self.envelope.attempt())
            .finish()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(s) = self.settle.take() {
            let outcome = Outcome::Nack {
                delay: None,
                reason: Some("delivery dropped without being settled".into()),
            };
            spawn_settle(s.settle(&self.envelope, outcome));
        }
    }
}

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

use crate::model::dead_letter::FailureSource;
use crate::model::envelope::Envelope;
use crate::model::error::{ErrorCode, Result};

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
        /// Who gave up: the dead letter's [`FailureSource`].
        source: FailureSource,
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
    /// Where a settlement left to a background task is counted: its bus's
    /// (set as the bus hands the delivery out), so the bus's close waits
    /// for it.
    detached: Option<Arc<Detached>>,
    /// Kept until the delivery is settled or dropped: its member's count
    /// of what it holds (consumer health).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Delivery {
    /// A delivery of `envelope` whose outcome goes to `settle`.
    pub fn new(envelope: Arc<Envelope>, settle: Arc<dyn Settle>) -> Self {
        Delivery {
            envelope,
            settle: Some(settle),
            detached: None,
            held: None,
        }
    }

    /// Keep `guard` until this delivery is settled or dropped.
    pub(crate) fn hold(&mut self, guard: impl std::any::Any + Send + Sync) {
        self.held = Some(Box::new(guard));
    }

    /// Count a settlement this delivery leaves to a background task (a
    /// drop's nack) in `detached`.
    pub(crate) fn track(&mut self, detached: &Arc<Detached>) {
        self.detached = Some(detached.clone());
    }

    /// The delivered envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The delivered envelope, shared.
    pub fn shared_envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }

    /// Acknowledge: the message is processed. `Ok` once the ack is
    /// durable, and then the group never hands the message out again. An
    /// ack that comes after the message's ack wait ran out and it was
    /// delivered again changes nothing and fails with `UNAVAILABLE`: the
    /// other delivery settles it.
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

    /// Terminal failure: dead-letter now with `code` and `reason`, from
    /// [`FailureSource::Handler`].
    pub async fn term(self, code: ErrorCode, reason: impl Into<String>) -> Result<()> {
        self.term_as(FailureSource::Handler, code, reason).await
    }

    /// Terminal failure reported by `source` (a forwarder, a gateway whose
    /// client gave the message up): dead-letter now with `code`, `reason`
    /// and that source.
    pub async fn term_as(
        self,
        source: FailureSource,
        code: ErrorCode,
        reason: impl Into<String>,
    ) -> Result<()> {
        self.finish(Outcome::Term {
            code,
            reason: reason.into(),
            source,
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
    /// Acknowledge without waiting for the ack to be durable: the
    /// settlement finishes in a background task (its bus's
    /// [`close`](crate::Bus::close) waits for it), so the consumer moves on
    /// while the commit is in flight, and a store commits many such acks
    /// together. Until it commits, the message's key stays held by this
    /// delivery; a crash before the commit delivers the message again
    /// (at-least-once), and a failed ack is logged and redelivered after
    /// the ack wait. Use [`ack`](Self::ack) where the next step needs the
    /// ack to be durable.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use futures_util::StreamExt;
    /// let bus = herald::Bus::memory();
    /// let mut jobs = bus.subscribe_raw("jobs").group("workers").await?;
    /// bus.publish(herald::Message::json("jobs", &1)?).await?;
    /// let delivery = jobs.next().await.unwrap()?;
    /// delivery.ack_nowait();
    /// bus.close().await?; // waits for the ack
    /// # Ok::<(), herald::Error>(()) }).unwrap();
    /// ```
    pub fn ack_nowait(mut self) {
        if let Some(s) = self.settle.take() {
            let acked = s.settle(&self.envelope, Outcome::Ack).map(|ack| {
                let envelope = self.envelope.clone();
                Box::pin(async move {
                    let acked = ack.await;
                    if let Err(e) = &acked {
                        let (topic, seq) = (envelope.topic(), envelope.seq());
                        let (correlation_id, causation_id) =
                            (envelope.correlation_id(), envelope.causation_id());
                        tracing::warn!(%topic, seq, %correlation_id, causation_id = causation_id.map(tracing::field::display), error = %e, "an ack made without waiting failed: the message will be delivered again");
                    }
                    acked
                }) as BoxFuture<'static, Result<()>>
            });
            spawn_settle(acked, self.detached.as_ref());
        }
    }

    /// Settle without waiting: a transport that settles asynchronously finishes
    /// in a background task.
    pub(crate) fn settle_detached(mut self, outcome: Outcome) {
        if let Some(s) = self.settle.take() {
            spawn_settle(s.settle(&self.envelope, outcome), self.detached.as_ref());
        }
    }
}

/// One bus's settlements running in background tasks (a dropped delivery's
/// nack, a detached settle), and a wake-up for when they reach zero:
/// [`Bus::close`](crate::Bus::close) waits for them, so work a stopped
/// handler abandoned is handed back before its store closes instead of
/// waiting out its ack deadline. Each bus has its own, so one bus's close
/// never waits on another's work.
#[derive(Default)]
pub(crate) struct Detached {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl Detached {
    /// Wait until none is running, or `deadline` passes; false when some
    /// still ran.
    pub(crate) async fn settled(&self, deadline: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        tokio::time::timeout(deadline, async {
            loop {
                let done = self.done.notified();
                if self.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await
        .is_ok()
    }
}

thread_local! {
    /// The bus whose subscription's stream is being dropped on this thread
    /// (see [`Detached::while_dropping`]).
    static DROPPING: std::cell::RefCell<Option<Arc<Detached>>> = const { std::cell::RefCell::new(None) };
}

impl Detached {
    /// Run `drop` (a subscription's stream going away) so that what it
    /// hands back in background tasks ([`spawn_release`]) counts here.
    pub(crate) fn while_dropping(self: &Arc<Self>, drop: impl FnOnce()) {
        let before = DROPPING.with(|d| d.replace(Some(self.clone())));
        drop();
        DROPPING.with(|d| *d.borrow_mut() = before);
    }
}

/// Hand back what a member's stream took and did not deliver, in a
/// background task, counted by the bus whose subscription is being dropped
/// (if any).
pub(crate) fn spawn_release(fut: BoxFuture<'static, Result<()>>) {
    let detached = DROPPING.with(|d| d.borrow().clone());
    spawn_settle(Some(fut), detached.as_ref());
}

/// Run a settlement in a background task, counted in `detached` if any.
fn spawn_settle(fut: Option<BoxFuture<'static, Result<()>>>, detached: Option<&Arc<Detached>>) {
    use std::sync::atomic::Ordering;
    let (Some(fut), Ok(rt)) = (fut, tokio::runtime::Handle::try_current()) else {
        return;
    };
    let detached = detached.cloned();
    if let Some(d) = &detached {
        d.running.fetch_add(1, Ordering::SeqCst);
    }
    rt.spawn(async move {
        let _ = fut.await;
        if let Some(d) = detached {
            if d.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                d.done.notify_waiters();
            }
        }
    });
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
            spawn_settle(s.settle(&self.envelope, outcome), self.detached.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::envelope::Kind;
    use crate::model::payload::Payload;
    use crate::model::topic::Topic;

    /// Settles when told to.
    struct Held(tokio::sync::watch::Receiver<bool>);

    impl Settle for Held {
        fn settle(&self, _: &Arc<Envelope>, _: Outcome) -> Option<BoxFuture<'static, Result<()>>> {
            let mut go = self.0.clone();
            Some(Box::pin(async move {
                let _ = go.wait_for(|go| *go).await;
                Ok(())
            }))
        }
    }

    /// Two buses' background settlements are counted apart: one bus's close
    /// waits for its own dropped deliveries, never for another's.
    #[tokio::test]
    async fn each_bus_waits_for_its_own_dropped_deliveries_only() {
        let (go, held) = tokio::sync::watch::channel(false);
        let source: Arc<str> = Arc::from("test");
        let topic = Topic::new("t.a").unwrap();
        let envelope = Envelope::new_unchecked(&source, Kind::Event, topic, Payload::default());
        let (mine, other) = (Arc::new(Detached::default()), Arc::new(Detached::default()));
        let mut delivery = Delivery::new(Arc::new(envelope), Arc::new(Held(held)));
        delivery.track(&mine);
        drop(delivery);
        let short = std::time::Duration::from_millis(20);
        assert!(
            other.settled(short).await,
            "the other bus has nothing running"
        );
        assert!(
            !mine.settled(short).await,
            "the nack of the dropped delivery runs"
        );
        go.send_replace(true);
        assert!(mine.settled(std::time::Duration::from_secs(60)).await);
    }
}

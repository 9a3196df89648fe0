//! Helpers for testing code that uses herald: inject faults into handlers
//! and transports.
//!
//! Owns [`FaultLayer`] (a handler [`Layer`] that fails, panics or slows
//! down on cue) and [`Faults`] / [`FaultyTransport`] (a transport wrapper
//! whose publishes fail or slow down and whose acks get lost, so the message
//! comes back, or held, as by a stalled commit). Nothing here is needed in production.
//!
//! # Testing handlers with paused time
//!
//! herald's timers (retry backoff, breaker reset, rate limits, dedupe
//! windows, timeouts) run on tokio's clock, so a test can pause it and let
//! tokio jump over every wait: a test of "three retries with 1 s base
//! backoff, then dead-lettered" runs in milliseconds and is exact.
//!
//! ```
//! use std::time::Duration;
//! use herald::{Bus, ErrorCode, Message};
//! use herald::retry::RetryPolicy;
//! use herald::testing::FaultLayer;
//!
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> herald::Result<()> {
//! let bus = Bus::memory();
//! // The first two calls fail as if the database were down.
//! let faults = FaultLayer::new().fail(2, ErrorCode::Unavailable);
//! let handler = bus
//!     .handler("orders.>")
//!     .group("billing")
//!     .retry(RetryPolicy::default().base(Duration::from_secs(1)))
//!     .layer(faults.clone())
//!     .run(|_order| async { Ok(()) })
//!     .await?;
//! bus.publish(Message::json("orders.placed", &1)?).await?;
//! // Paused time: the backoff sleeps (about 1 s, then 2 s) pass at once.
//! while faults.calls() < 3 {
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//! }
//! let report = handler.shutdown(Duration::from_secs(1)).await;
//! assert_eq!((report.retried, report.acked), (2, 1));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::backend::subscription::{StartPosition, SubscribeSpec, Subscription};
use crate::backend::transport::{
    DeliveryState, DynTransport, Features, GroupInfo, Inspect, IntoTransport, TopicInfo, Transport,
};
use crate::bus::Bus;
use crate::model::dead_letter::{DeadLetter, DeadLetterFilter};
use crate::model::delivery::{BoxFuture, Delivery, Outcome, Settle};
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::topic::Topic;
use crate::runtime::middleware::{Effects, Layer, Next};

#[derive(Debug, Clone, Copy)]
enum Fault {
    Fail(ErrorCode),
    Panic,
}

/// A handler layer that injects faults: the next calls fail with a code or
/// panic, in the order the faults were added; every call can be slowed
/// down. Clones share the plan and the call count.
#[derive(Clone, Default)]
pub struct FaultLayer {
    shared: Arc<FaultPlan>,
}

#[derive(Default)]
struct FaultPlan {
    plan: Mutex<VecDeque<Fault>>,
    delay: Mutex<Option<Duration>>,
    calls: AtomicU64,
}

impl FaultLayer {
    /// A layer that injects nothing until told to.
    pub fn new() -> Self {
        FaultLayer::default()
    }

    /// The next `times` calls fail with `code` (retryable or not as the
    /// code is) without reaching the handler.
    pub fn fail(self, times: u32, code: ErrorCode) -> Self {
        self.push(times, Fault::Fail(code));
        self
    }

    /// The next `times` calls panic.
    pub fn panic(self, times: u32) -> Self {
        self.push(times, Fault::Panic);
        self
    }

    /// Every call waits `delay` first.
    pub fn delay(self, delay: Duration) -> Self {
        *self.shared.delay.lock() = Some(delay);
        self
    }

    /// Calls seen so far, faulty or not.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    fn push(&self, times: u32, fault: Fault) {
        let mut plan = self.shared.plan.lock();
        plan.extend(std::iter::repeat_n(fault, times as usize));
    }
}

impl Layer for FaultLayer {
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            let fault = self.shared.plan.lock().pop_front();
            let delay = *self.shared.delay.lock();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            self.shared.calls.fetch_add(1, Ordering::SeqCst);
            match fault {
                None => next.run(envelope).await,
                Some(Fault::Fail(code)) => Err(Error::new(code, "injected failure")),
                Some(Fault::Panic) => panic!("injected panic"),
            }
        })
    }
}

impl std::fmt::Debug for FaultLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultLayer")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

/// Faults to inject into a transport, shared by clones: wrap a transport
/// with [`wrap`](Faults::wrap) (or a bus with [`wrap_bus`](Faults::wrap_bus))
/// and arm faults at any time.
///
/// ```
/// use herald::{Bus, ErrorCode, Message};
/// use herald::testing::Faults;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let faults = Faults::new();
/// let bus = faults.wrap_bus(&Bus::memory());
/// faults.fail_publishes(1, ErrorCode::Unavailable);
/// let err = bus.publish(Message::json("a.b", &1)?).await.unwrap_err();
/// assert_eq!(err.code(), ErrorCode::Unavailable);
/// assert_eq!(bus.publish(Message::json("a.b", &1)?).await?, [1]);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Faults {
    shared: Arc<TransportPlan>,
}

#[derive(Default)]
struct TransportPlan {
    failing_publishes: Mutex<VecDeque<ErrorCode>>,
    publish_delay: Mutex<Option<Duration>>,
    subscribe_delay: Mutex<Option<Duration>>,
    lost_acks: AtomicU64,
    acks_held: AcksHeld,
    publishes: AtomicU64,
    failing_deliveries: AtomicU64,
}

impl Faults {
    /// No faults armed.
    pub fn new() -> Self {
        Faults::default()
    }

    /// The next `times` publishes fail with `code`, appending nothing.
    pub fn fail_publishes(&self, times: u32, code: ErrorCode) {
        let mut plan = self.shared.failing_publishes.lock();
        plan.extend(std::iter::repeat_n(code, times as usize));
    }

    /// Every publish waits `delay` first (`None`: no more).
    pub fn delay_publishes(&self, delay: Option<Duration>) {
        *self.shared.publish_delay.lock() = delay;
    }

    /// Every subscribe waits `delay` before it reaches the transport
    /// (`None`: no more): a store slow to set a subscription up.
    pub fn delay_subscribes(&self, delay: Option<Duration>) {
        *self.shared.subscribe_delay.lock() = delay;
    }

    /// The next `times` acks are lost on the way, as if they never reached
    /// the transport: the acker gets `UNAVAILABLE`, and the message comes
    /// back — at once on a transport without transactions, and after the
    /// ack wait where the ack commits together with the handler's effects
    /// (which are lost with it).
    pub fn lose_acks(&self, times: u64) {
        self.shared.lost_acks.fetch_add(times, Ordering::SeqCst);
    }

    /// While `held`, acks wait before they reach the transport, as on a
    /// store whose commits stall; releasing them lets them through.
    pub fn hold_acks(&self, held: bool) {
        self.shared.acks_held.0.send_replace(held);
    }

    /// The next `times` polls of any subscription yield an `UNAVAILABLE`
    /// error instead of a delivery (a store that cannot be read); nothing
    /// is lost, the deliveries come after.
    pub fn fail_deliveries(&self, times: u64) {
        self.shared
            .failing_deliveries
            .fetch_add(times, Ordering::SeqCst);
    }

    /// Publishes (appends) that reached the wrapped transport's door,
    /// failed ones included.
    pub fn publishes(&self) -> u64 {
        self.shared.publishes.load(Ordering::SeqCst)
    }

    /// `transport` with these faults.
    pub fn wrap(&self, transport: impl IntoTransport) -> FaultyTransport {
        FaultyTransport {
            inner: transport.into_shared(),
            faults: self.clone(),
        }
    }

    /// A bus with `bus`'s transport, configuration, layers and publish
    /// options, with these faults in front of the transport.
    pub fn wrap_bus(&self, bus: &Bus) -> Bus {
        let faulty = FaultyTransport {
            inner: bus.inner.transport.clone(),
            faults: self.clone(),
        };
        bus.with_transport(Arc::new(faulty))
    }

    fn take_lost_ack(&self) -> bool {
        self.shared
            .lost_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Whether acks are held ([`Faults::hold_acks`]).
struct AcksHeld(tokio::sync::watch::Sender<bool>);

impl Default for AcksHeld {
    fn default() -> Self {
        AcksHeld(tokio::sync::watch::channel(false).0)
    }
}

impl AcksHeld {
    /// Until acks are no longer held.
    fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut held = self.0.subscribe();
        async move {
            let _ = held.wait_for(|held| !held).await;
        }
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

/// A transport with [`Faults`] in front of it.
pub struct FaultyTransport {
    inner: Arc<dyn DynTransport>,
    faults: Faults,
}

impl std::fmt::Debug for FaultyTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTransport").finish_non_exhaustive()
    }
}

impl Transport for FaultyTransport {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        {
            self.faults.shared.publishes.fetch_add(1, Ordering::SeqCst);
            let delay = *self.faults.shared.publish_delay.lock();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let failing = self.faults.shared.failing_publishes.lock().pop_front();
            if let Some(code) = failing {
                return Err(Error::new(code, "injected publish failure"));
            }
            self.inner.publish(batch).await
        }
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Subscription> {
        {
            let delay = *self.faults.shared.subscribe_delay.lock();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut sub = self.inner.subscribe(spec).await?;
            let close = sub.close_handle();
            let faults = self.faults.clone();
            let failing = self.faults.clone();
            let sub = futures_util::stream::poll_fn(move |cx| {
                let injected = failing.shared.failing_deliveries.fetch_update(
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                    |n| n.checked_sub(1),
                );
                if injected.is_ok() {
                    let e = Error::new(ErrorCode::Unavailable, "injected delivery failure");
                    return std::task::Poll::Ready(Some(Err(e)));
                }
                sub.poll_next_unpin(cx)
            });
            let wrapped = sub.map(move |item| {
                item.map(|delivery| {
                    let envelope = delivery.shared_envelope().clone();
                    let settle = FaultySettle {
                        inner: Mutex::new(Some(delivery)),
                        faults: faults.clone(),
                    };
                    Delivery::new(envelope, Arc::new(settle))
                })
            });
            Ok(Subscription::new(wrapped, close))
        }
    }

    async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        self.inner.last_seq(topic).await
    }

    fn export_command(
        &self,
        topic: &Topic,
        serve: crate::backend::transport::CommandServe,
    ) -> Option<crate::backend::transport::CommandExport> {
        self.inner.export_command(topic, serve)
    }

    fn call(
        &self,
        command: Envelope,
        timeout: std::time::Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        self.inner.call(command, timeout)
    }

    fn attach_metrics(&self, metrics: &crate::observe::metrics::Metrics) {
        self.inner.attach_metrics(metrics)
    }

    fn processed_ids(
        &self,
        window: std::time::Duration,
    ) -> Result<Arc<dyn crate::backend::dedupe::DedupeStore>> {
        self.inner.processed_ids(window)
    }

    fn schemas(&self) -> Result<Arc<dyn crate::backend::schemas::SchemaStore>> {
        self.inner.schemas()
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn features(&self) -> Features {
        self.inner.features()
    }
}

impl Inspect for FaultyTransport {
    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.topics().await
    }

    async fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        self.inner.replay(topic, from, limit).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.inner.groups().await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(filter).await
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.inner.purge_dead_letters(filter).await
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        self.inner.delivery_state(topic, seq, group).await
    }
}

/// Settles the wrapped transport's delivery, losing acks on cue.
struct FaultySettle {
    inner: Mutex<Option<Delivery>>,
    faults: Faults,
}

fn lost_error() -> Error {
    Error::new(ErrorCode::Unavailable, "ack lost (injected)")
}

fn lost() -> Outcome {
    Outcome::Nack {
        delay: None,
        reason: Some("ack lost (injected)".into()),
    }
}

impl Settle for FaultySettle {
    fn settle(
        &self,
        _envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let delivery = self.inner.lock().take()?;
        if outcome == Outcome::Ack && self.faults.take_lost_ack() {
            // The transport never hears the ack (it redelivers); the caller
            // sees the failure, as it would a dropped connection.
            let nacked = delivery.finish(lost());
            return Some(Box::pin(async move {
                nacked.await?;
                Err(lost_error())
            }));
        }
        if outcome == Outcome::Ack {
            let released = self.faults.shared.acks_held.released();
            return Some(Box::pin(async move {
                released.await;
                delivery.finish(outcome).await
            }));
        }
        Some(Box::pin(delivery.finish(outcome)))
    }

    fn ack_with_effects(
        &self,
        _envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        let Some(delivery) = self.inner.lock().take() else {
            return Err(effects);
        };
        match delivery.ack_with_effects(effects) {
            Err((delivery, effects)) => {
                *self.inner.lock() = Some(delivery);
                Err(effects)
            }
            Ok(commit) if self.faults.take_lost_ack() => {
                // Lost with its transaction: neither the ack nor the effects
                // reach the store, and the lease runs out into a redelivery.
                drop(commit);
                Ok(Box::pin(std::future::ready(Err(lost_error()))))
            }
            Ok(commit) => Ok(commit),
        }
    }
}

//! The handler runtime: consume loops users do not write by hand.
//!
//! Owns [`HandlerBuilder`] and [`Handler`]: a consumer-group subscription
//! whose deliveries run a handler concurrently (up to a limit), each inside
//! the message's correlation context. The outcome settles the delivery: `Ok`
//! acks, a retryable error (or a panic) nacks for redelivery, a terminal
//! error dead-letters at once. Events of one `key` are never handled
//! concurrently and always in order — the group delivers a key's next event
//! only after the previous one is settled — while different keys run in
//! parallel (and, with [`GroupOrdering::PerTopic`], each topic's keyless
//! events in order too). [`Handler::shutdown`] stops taking messages, lets in-flight
//! handlers finish within a deadline, and leaves the rest to be redelivered:
//! nothing is acked unprocessed.
//!
//! The pieces around the call are layers ([`crate::runtime::middleware`]); this
//! module owns what decides how a call settles its delivery: effects
//! published with the ack, the retry policy, dead-lettering, deferral, the
//! correlation context and the [`HandlerObserver`] hook.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use tracing::Instrument;

use crate::backend::subscription::{CloseHandle, GroupOrdering, StartPosition};
use crate::bus::Bus;
use crate::config::RetryPolicy;
use crate::model::context::Context;
use crate::model::dead_letter::FailureSource;
use crate::model::delivery::{Delivery, Outcome};
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::event::Event;
use crate::model::message::Message;
use crate::observe::instrument::{Instruments, LagProbe, CONSUMER_LAG};
pub use crate::observe::outcome::{HandlerObserver, HandlerOutcome};
use crate::runtime::dedupe::Dedupe;
use crate::runtime::middleware::{Chain, Effects, Endpoint, Layer, Timeout};
use crate::runtime::panic::catch_panic;

/// Handlers running at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// A call the driver polls in place must give the thread back within this,
/// or the handler's later calls each get a task of their own.
const INLINE_BUDGET: Duration = Duration::from_micros(200);
/// The wait after a subscription error, doubling up to [`ERROR_BACKOFF_MAX`].
const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One in this many calls run in place is timed against [`INLINE_BUDGET`].
const INLINE_SAMPLE: u32 = 8;
/// Consecutive timed calls over [`INLINE_BUDGET`] that end the fast path
/// (one slow first call, warming caches, does not).
const SLOW_CALLS_TO_LEAVE_INLINE: u32 = 3;

/// Options of a handler; `.run(handler)` starts it. Built by [`Bus::handler`].
#[must_use = "a handler starts with .run(..)"]
pub struct HandlerBuilder {
    bus: Bus,
    patterns: Vec<String>,
    group: Option<String>,
    concurrency: usize,
    start: Option<StartPosition>,
    retry: Option<Retries>,
    max_deliver: Option<u32>,
    ordering: GroupOrdering,
    timeout: Option<Duration>,
    ack_wait: Option<Duration>,
    await_acks: bool,
    layers: Vec<Arc<dyn Layer>>,
    observer: Option<Arc<dyn HandlerObserver>>,
    /// The source its dead letters name: a forwarder's handler is one.
    failure_source: FailureSource,
}

impl Bus {
    /// Handle the events on topics matching `pattern` as consumer group
    /// `.group(..)` (required).
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::{Bus, Error, Message, Payload};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let handler = bus
    ///     .handler("orders.>")
    ///     .group("billing")
    ///     .concurrency(8)
    ///     .run(|order| async move {
    ///         let total: u32 = order.decode()?;
    ///         if total == 0 {
    ///             return Err(Error::terminal(herald::ErrorCode::Validation, "empty order"));
    ///         }
    ///         Ok(())
    ///     })
    ///     .await?;
    /// bus.publish(Message::json("orders.placed", &42)?).await?;
    /// let report = handler.shutdown(Duration::from_secs(5)).await;
    /// # let _ = report;
    /// # Ok(()) }
    /// ```
    pub fn handler(&self, pattern: &str) -> HandlerBuilder {
        self.handler_on(vec![pattern.to_owned()])
    }

    /// Handle the typed event `E` (every variant's topic) as consumer group
    /// `.group(..)`; start it with [`HandlerBuilder::run_typed`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::{Bus, Event, Message};
    ///
    /// #[derive(Event, Debug)]
    /// enum OrderEvent { Placed { id: u64, total: u32 } }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let handler = bus
    ///     .handler_for::<OrderEvent>()
    ///     .group("invoicing")
    ///     .run_typed(|OrderEvent::Placed { id, total }: OrderEvent| async move {
    ///         // The effect is published with the ack.
    ///         Message::json("invoices.issued", &serde_json::json!({ "order": id, "total": total }))
    ///     })
    ///     .await?;
    /// bus.publish(OrderEvent::Placed { id: 7, total: 30 }).await?;
    /// handler.shutdown(Duration::from_secs(5)).await;
    /// # Ok(()) }
    /// ```
    pub fn handler_for<E: Event>(&self) -> HandlerBuilder {
        self.handler_on(E::TOPICS.iter().map(|t| t.to_string()).collect())
    }

    fn handler_on(&self, patterns: Vec<String>) -> HandlerBuilder {
        HandlerBuilder {
            bus: self.clone(),
            patterns,
            group: None,
            concurrency: DEFAULT_CONCURRENCY,
            start: None,
            retry: None,
            max_deliver: None,
            ordering: GroupOrdering::PerKey,
            timeout: None,
            ack_wait: None,
            await_acks: true,
            layers: Vec::new(),
            observer: None,
            failure_source: FailureSource::Handler,
        }
    }
}

impl HandlerBuilder {
    /// The consumer group (a durable transport keeps its offsets).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Handlers running at once, 1–10,000 (default [`DEFAULT_CONCURRENCY`]).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Where to start reading, as [`StartPosition`] says: an existing group keeps its position.
    /// Default: the bus's [`Config::start_position`](crate::Config::start_position).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// How long a delivery may go unsettled before it is redelivered
    /// (default from the bus's config); keep it above the slowest call.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// Whether a call that succeeds without effects is reported — to the
    /// observer, the metrics and the [`HandlerReport`] — only once its ack
    /// is durable (default `true`): an ack that fails then counts as a
    /// failed call, and [`Handler::shutdown`] waits for the ack.
    ///
    /// Either way a call gives back its concurrency slot when the handler
    /// returns, not when its settlement commits: acks on their way hold
    /// their deliveries (the subscription's in-flight limit bounds them),
    /// not slots, so `concurrency` handlers run while a store commits many
    /// acks together.
    ///
    /// With `false` the ack is made with [`Delivery::ack_nowait`]: the call
    /// is reported as acked when the ack is made, and an ack that then
    /// fails is only logged (the message runs again after the ack wait).
    /// Nothing is lost either way: the message's key stays held until the
    /// ack commits, and a crash before it redelivers the message
    /// (at-least-once, as for any handler). A call's effects are durable
    /// before the call is reported either way (where the store can, they
    /// commit with the ack).
    pub fn await_acks(mut self, wait: bool) -> Self {
        self.await_acks = wait;
        self
    }

    /// Retry retryable failures (and panics) by `policy`: redeliver after
    /// the policy's backoff, and dead-letter once it gives up (keep its
    /// attempts below the store's `max_deliver`, which dead-letters first).
    ///
    /// Without one a handler retries by its bus's
    /// [`handler_retry`](crate::BusBuilder::handler_retry), else by the
    /// policy of the bus's [`Config`](crate::Config), which
    /// `HERALD_MAX_RETRY_ATTEMPTS`, `HERALD_RETRY_BACKOFF_BASE` and
    /// `HERALD_RETRY_MAX_DELAY` set (default: 3 retries, 1 s × 2ⁿ × jitter
    /// in [0.5, 1.5], at most 60 s apart, then dead-letter).
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::{retry::RetryPolicy, Bus};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let policy = RetryPolicy::default().max_attempts(5).base(Duration::from_millis(200));
    /// let handler = bus
    ///     .handler("payments.>")
    ///     .group("ledger")
    ///     .retry(policy)
    ///     .run(|_event| async { Ok(()) })
    ///     .await?;
    /// assert_eq!(handler.retry_policy(), Some(policy));
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(Retries::Backoff(policy));
        self
    }

    /// Delivery attempts before the store dead-letters an event of this
    /// handler's group, whatever the retry policy says (see
    /// [`SubscribeRaw::max_deliver`](crate::SubscribeRaw::max_deliver)).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Which events the handler's group takes one at a time, in order
    /// (default [`GroupOrdering::PerKey`]: a key's events in order, keyless
    /// events concurrently). [`GroupOrdering::PerTopic`] also handles each
    /// topic's keyless events one at a time, in order, while topics run
    /// concurrently: a session per topic is handled sequentially.
    ///
    /// ```
    /// use herald::{Bus, GroupOrdering};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let handler = bus
    ///     .handler("chat.session.*")
    ///     .group("transcripts")
    ///     .ordering(GroupOrdering::PerTopic)
    ///     .concurrency(16)
    ///     .run(|_event| async { Ok(()) })
    ///     .await?;
    /// handler.shutdown(std::time::Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub fn ordering(mut self, ordering: GroupOrdering) -> Self {
        self.ordering = ordering;
        self
    }

    /// Redeliver a failed call at once, with no backoff, until the store's
    /// `max_deliver` dead-letters it: the loop against a dependency that is
    /// down which the default retry policy avoids. For handlers whose
    /// failures clear by themselves, and tests.
    pub fn redeliver_at_once(mut self) -> Self {
        self.retry = Some(Retries::AtOnce);
        self
    }

    /// Give each call at most `limit`; a call that takes longer is stopped
    /// and counts as a retryable `TIMEOUT` failure. 1 ms–1 hour.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Report every call to `observer` (duration and outcome).
    pub fn observe(mut self, observer: impl HandlerObserver) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Add a middleware [`Layer`] around this handler's calls (after the
    /// bus's layers, in the order added).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Name `source` on the dead letters this handler gives up (the
    /// forwarder's handler names [`FailureSource::Forwarder`]).
    pub(crate) fn failure_source(mut self, source: FailureSource) -> Self {
        self.failure_source = source;
        self
    }

    /// Subscribe and start handling with `handler`.
    ///
    /// The handler returns its effects: `()` for none, or a [`Message`] /
    /// `Vec<Message>` to publish. Effects are published with the ack: on a
    /// transport with transactions in the same transaction as the offset
    /// commit, otherwise published first with idempotency keys derived from
    /// the handled message (so a retry cannot publish them twice) and acked
    /// after. Effects inherit the handled message's correlation id.
    pub async fn run<F, Fut, R>(self, handler: F) -> Result<Handler>
    where
        F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoEffects,
    {
        self.start_with(Box::new(move |env| {
            let handled = handler(env);
            Box::pin(async move { handled.await.map(IntoEffects::into_effects) })
        }))
        .await
    }

    /// Subscribe and start handling decoded typed events with `handler`
    /// (see [`Bus::handler_for`]). An event that does not decode is
    /// dead-lettered with `VALIDATION`.
    pub async fn run_typed<E, F, Fut, R>(self, handler: F) -> Result<Handler>
    where
        E: Event,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoEffects,
    {
        self.start_with(Box::new(move |env| {
            let handled = E::from_envelope(&env)
                .map_err(|e| Error::terminal(ErrorCode::Validation, e.message()))
                .map(&handler);
            Box::pin(async move { handled?.await.map(IntoEffects::into_effects) })
        }))
        .await
    }

    async fn start_with(self, endpoint: Endpoint) -> Result<Handler> {
        let Some(group) = self.group else {
            return Err(Error::validation(
                "a handler needs a consumer group: .group(name)",
            ));
        };
        crate::config::in_range("concurrency", self.concurrency, 1, 10_000)?;
        let retry = self
            .retry
            .or(self.bus.inner.handlers.retry.map(Retries::Backoff))
            .unwrap_or_else(|| {
                let policy = self.bus.inner.config.delivery_config().retry_policy();
                Retries::Backoff(policy)
            });
        if let Retries::Backoff(policy) = &retry {
            policy.validate()?;
        }
        let mut layers = self.bus.inner.handlers.layers.clone();
        layers.extend(self.layers);
        if let Some(t) = self.timeout {
            layers.push(Arc::new(Timeout::new(t)?));
        }
        let mut subscribe = self
            .bus
            .subscribe_raw_patterns(&self.patterns)
            .group(&group)
            .ordering(self.ordering)
            .member_kind("handler");
        if let Some(start) = self.start {
            subscribe = subscribe.start(start);
        }
        if let Some(wait) = self.ack_wait {
            subscribe = subscribe.ack_wait(wait);
        }
        if let Some(n) = self.max_deliver {
            subscribe = subscribe.max_deliver(n);
        }
        // Room for every call running and as many claimed ahead.
        let in_flight =
            crate::config::DEFAULT_MAX_IN_FLIGHT.max(self.concurrency.saturating_mul(2));
        let mut sub = subscribe
            .max_in_flight(in_flight.min(crate::config::MAX_IN_FLIGHT_RANGE.1))
            .await?;
        let close = sub.close_handle();
        if let Some(member) = sub.member() {
            let probes: Vec<_> = layers.iter().filter_map(|l| l.refusing()).collect();
            if !probes.is_empty() {
                member.breaker(move || probes.iter().any(|open| open()));
            }
        }
        let runtime = Arc::new(Runtime {
            chain: Arc::new(Chain {
                group: Arc::from(group),
                layers,
                endpoint,
            }),
            bus: self.bus,
            retry,
            await_acks: self.await_acks,
            failure_source: self.failure_source,
            observer: self.observer,
            counts: Counts::default(),
            lag: LagProbe::default(),
        });
        let limit = Arc::new(Semaphore::new(self.concurrency));
        let (rt, permits) = (runtime.clone(), limit.clone());
        let driver = tokio::spawn(async move {
            let limit = permits;
            let mut running = JoinSet::new();
            let (mut inline, mut slow, mut calls) = (true, 0, 0u32);
            let mut backoff = ERROR_BACKOFF_MIN;
            while let Some(item) = sub.next().await {
                let delivery = match item {
                    Ok(delivery) => delivery,
                    Err(_) => {
                        // The transport could not deliver (a store error):
                        // try again, backing off instead of spinning.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ERROR_BACKOFF_MAX);
                        continue;
                    }
                };
                backoff = ERROR_BACKOFF_MIN;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let rt = rt.clone();
                // Boxed: a task then moves a pointer, not the whole (large)
                // state of the handler call, between its stages.
                let mut call = Box::pin(async move {
                    // A panic past the handler (an observer, a layer's
                    // `handled` hook) must not take the driver down with it;
                    // the delivery it dropped is redelivered.
                    let _ = std::panic::AssertUnwindSafe(rt.handle(delivery, permit))
                        .catch_unwind()
                        .await;
                });
                if inline {
                    // Fast path: a call that finishes without waiting needs
                    // no task of its own. Calls that run long on the driver
                    // (CPU-bound work) turn the fast path off, so such
                    // handlers spread over the runtime's threads. Every
                    // INLINE_SAMPLE-th call is timed (the clock is not free).
                    let began = (calls % INLINE_SAMPLE == 0).then(Instant::now);
                    calls = calls.wrapping_add(1);
                    let done = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)))
                        .await
                        .is_ready();
                    if let Some(began) = began {
                        slow = if began.elapsed() < INLINE_BUDGET {
                            0
                        } else {
                            slow + 1
                        };
                        inline = slow < SLOW_CALLS_TO_LEAVE_INLINE;
                    }
                    if done {
                        continue;
                    }
                }
                running.spawn(call);
                while running.try_join_next().is_some() {}
            }
            running
        });
        Ok(Handler {
            close,
            driver: Some(driver),
            runtime,
            limit,
            concurrency: self.concurrency,
        })
    }
}

/// The idempotency key of effect `i` of handling `input` in `group`: the
/// same on every retry, different per group. A group name too long to fit
/// the key is replaced by its FNV-1a hash (stable across builds).
fn effect_key(group: &str, input: &Envelope, i: usize) -> String {
    let key = format!("{group}:{}:{i}", input.id());
    if key.len() <= crate::model::envelope::MAX_FIELD_LEN {
        return key;
    }
    let hash = crate::backend::fnv1a(group.as_bytes());
    format!("#{hash:016x}:{}:{i}", input.id())
}

/// What a handler returns besides success: the messages to publish as its
/// effects.
pub trait IntoEffects: Send + 'static {
    /// The messages to publish.
    fn into_effects(self) -> Effects;
}

impl IntoEffects for () {
    fn into_effects(self) -> Effects {
        Effects::new()
    }
}

impl IntoEffects for Message {
    fn into_effects(self) -> Effects {
        vec![self]
    }
}

impl IntoEffects for Option<Message> {
    fn into_effects(self) -> Effects {
        self.into_iter().collect()
    }
}

impl IntoEffects for Vec<Message> {
    fn into_effects(self) -> Effects {
        self
    }
}

/// What a handler does with a retryable failure.
#[derive(Debug, Clone, Copy)]
enum Retries {
    /// Redeliver after the policy's backoff; dead-letter once it gives up.
    Backoff(RetryPolicy),
    /// Redeliver at once, up to the store's `max_deliver`
    /// ([`HandlerBuilder::redeliver_at_once`]).
    AtOnce,
}

/// One running handler's shared parts.
struct Runtime {
    bus: Bus,
    chain: Arc<Chain>,
    retry: Retries,
    /// Wait for each plain ack to be durable ([`HandlerBuilder::await_acks`]).
    await_acks: bool,
    /// The source of the dead letters this handler gives up.
    failure_source: FailureSource,
    observer: Option<Arc<dyn HandlerObserver>>,
    counts: Counts,
    lag: LagProbe,
}

impl Runtime {
    /// Handle one delivery and settle it. The call's concurrency slot
    /// (`permit`) is given back when the handler chain returns, before the
    /// settlement: a call waiting for its ack to be durable holds the
    /// delivery (the subscription's `max_in_flight` bounds those), not a
    /// slot, so a store whose commits take long still runs `concurrency`
    /// handlers at once.
    async fn handle(&self, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let env = delivery.shared_envelope().clone();
        let instruments = self.bus.instruments();
        let began = (self.observer.is_some() || instruments.is_some()).then(Instant::now);
        if let Some(i) = instruments {
            self.probe_lag(i, &env);
        }
        let context = Context::of(&env);
        let trace = context.trace();
        let span = tracing::info_span!(
            "herald.handle",
            topic = %env.topic(),
            group = %self.chain.group,
            seq = env.seq(),
            attempt = env.attempt(),
            message_id = %env.id(),
            correlation_id = %env.correlation_id(),
            causation_id = env.causation_id().map(tracing::field::display),
            trace_id = trace.map(|t| t.trace_id_hex()).as_deref(),
            parent_span_id = trace.map(|t| format!("{:016x}", t.span_id())).as_deref(),
            outcome = tracing::field::Empty,
        );
        if let (Some(p), Some(t)) = (self.bus.inner.propagator(), trace) {
            p.continue_span(&span, t);
        }
        let run = context
            .scope(catch_panic(
                || format!("handler of `{}`", env.topic()),
                async { Ok(self.call(&env).await) },
            ))
            .instrument(span.clone());
        // A panic is a retryable failure; the handler's own errors keep their verdict.
        let result = run
            .await
            .unwrap_or_else(|panic| Err(panic.with_retryable(true)));
        drop(permit);
        let settle = async {
            match result {
                Ok(effects) => match self.ack(delivery, &env, effects).await {
                    Ok(()) => HandlerOutcome::Acked,
                    Err((Some(delivery), e)) => self.fail(delivery, &env, e).await,
                    Err((None, _)) => HandlerOutcome::Retried,
                },
                Err(e) => self.fail(delivery, &env, e).await,
            }
        };
        let observed = settle
            .instrument(tracing::debug_span!(parent: &span, "herald.settle"))
            .await;
        span.record("outcome", tracing::field::debug(observed));
        self.counts.add(observed);
        if let Some(began) = began {
            let took = began.elapsed();
            if let Some(i) = instruments {
                i.handled(&env, took, observed);
            }
            if let Some(observer) = &self.observer {
                observer.handled(&env, took, observed);
            }
        }
    }

    /// At most once per [`LAG_REFRESH`](crate::observe::instrument::LAG_REFRESH) per
    /// topic, set this group's lag behind `env`'s topic from the
    /// transport's last `seq`, on a task of its own.
    fn probe_lag(&self, instruments: &Instruments, env: &Envelope) {
        let Some(seq) = env.seq() else { return };
        if !self.lag.due(env.topic()) {
            return;
        }
        let gauge = instruments.metrics.gauge(
            CONSUMER_LAG,
            &[
                ("group", &self.chain.group),
                ("topic", env.topic().as_str()),
            ],
        );
        let (transport, topic) = (self.bus.inner.transport.clone(), env.topic().clone());
        tokio::spawn(async move {
            if let Ok(Some(last)) = transport.last_seq(&topic).await {
                gauge.set(last.saturating_sub(seq) as f64);
            }
        });
    }

    /// Run the chain and prepare its effects (inside the message's
    /// correlation context, so they inherit it).
    async fn call(&self, env: &Arc<Envelope>) -> Result<Vec<Envelope>> {
        let effects = self.chain.start().run(env.clone()).await?;
        if effects.is_empty() {
            return Ok(Vec::new());
        }
        let mut prepared = self.bus.prepare(effects)?;
        self.bus.check_contracts(&prepared).await?;
        for (i, effect) in prepared.iter_mut().enumerate() {
            if effect.idempotency_key.is_none() {
                effect.idempotency_key = Some(effect_key(&self.chain.group, env, i));
            }
        }
        Ok(prepared)
    }

    /// Publish `effects` and ack: atomically where the transport can, else
    /// publish first. On failure, the delivery if it is still unsettled.
    async fn ack(
        &self,
        delivery: Delivery,
        env: &Envelope,
        effects: Vec<Envelope>,
    ) -> std::result::Result<(), (Option<Delivery>, Error)> {
        let delivery = if effects.is_empty() {
            delivery
        } else {
            match delivery.ack_with_effects(effects) {
                Ok(committed) => {
                    committed.await.map_err(|e| (None, e))?;
                    self.handled(env).await;
                    return Ok(());
                }
                Err((delivery, effects)) => match self.bus.append(effects).await {
                    Ok(_) => delivery,
                    Err(e) => return Err((Some(delivery), e)),
                },
            }
        };
        self.handled(env).await;
        // A failed ack leaves the message to be redelivered; the dedupe
        // layer (if any) then skips it.
        if !self.await_acks {
            delivery.ack_nowait();
            return Ok(());
        }
        delivery.ack().await.map_err(|e| (None, e))
    }

    /// Tell the layers `env` is handled. A layer that cannot record it
    /// (a dedupe store that is down) only loses the chance to skip a
    /// redelivery, so the ack goes ahead.
    async fn handled(&self, env: &Envelope) {
        let _ = self.chain.handled(env).await;
    }

    /// Settle a failed call by the error's verdict and the retry policy.
    async fn fail(&self, delivery: Delivery, env: &Envelope, e: Error) -> HandlerOutcome {
        let (outcome, observed) = if let Some(delay) = e.deferred() {
            (Outcome::Defer { delay }, HandlerOutcome::Deferred)
        } else if !e.retryable() {
            let reason = e.message().to_owned();
            let outcome = Outcome::Term {
                code: e.code(),
                reason,
                source: self.failure_source,
            };
            (outcome, HandlerOutcome::DeadLettered)
        } else {
            self.retry_or_give_up(env, e)
        };
        let _ = delivery.finish(outcome).await;
        observed
    }

    fn retry_or_give_up(&self, env: &Envelope, e: Error) -> (Outcome, HandlerOutcome) {
        let Retries::Backoff(policy) = self.retry else {
            let outcome = Outcome::Nack {
                delay: None,
                reason: Some(e.to_string()),
            };
            return (outcome, HandlerOutcome::Retried);
        };
        let age = (chrono::Utc::now() - env.timestamp())
            .to_std()
            .unwrap_or_default();
        if policy.allows(env.attempt(), age) {
            let outcome = Outcome::Nack {
                delay: Some(policy.delay(env.attempt().saturating_sub(1))),
                reason: Some(e.to_string()),
            };
            return (outcome, HandlerOutcome::Retried);
        }
        let outcome = Outcome::Term {
            code: e.code(),
            reason: format!(
                "retries exhausted after {} attempts: {}",
                env.attempt(),
                e.message()
            ),
            source: self.failure_source,
        };
        (outcome, HandlerOutcome::DeadLettered)
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    deferred: AtomicU64,
}

impl Counts {
    fn add(&self, outcome: HandlerOutcome) {
        let counter = match outcome {
            HandlerOutcome::Acked => &self.ok,
            HandlerOutcome::Retried => &self.retried,
            HandlerOutcome::DeadLettered => &self.dead,
            HandlerOutcome::Deferred => &self.deferred,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running handler. Dropping it without [`shutdown`](Handler::shutdown)
/// stops taking messages and abandons in-flight ones to redelivery.
#[derive(Debug)]
pub struct Handler {
    close: CloseHandle,
    driver: Option<tokio::task::JoinHandle<JoinSet<()>>>,
    runtime: Arc<Runtime>,
    /// Permits of calls in flight (the driver waits on it when all are).
    limit: Arc<Semaphore>,
    concurrency: usize,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("group", &self.chain.group)
            .finish_non_exhaustive()
    }
}

/// How a handler ended and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerReport {
    /// Messages handled and acked.
    pub acked: u64,
    /// Failures handed back for redelivery (retryable errors and panics).
    pub retried: u64,
    /// Messages dead-lettered on a terminal error or after their retries.
    pub dead_lettered: u64,
    /// Messages handed back unprocessed, to come again without counting an
    /// attempt (an open circuit breaker).
    pub deferred: u64,
    /// In-flight handlers still running at the deadline, stopped unsettled:
    /// their messages will be redelivered.
    pub abandoned: usize,
}

impl Handler {
    /// The policy this handler retries failures by, `None` when it
    /// [redelivers at once](HandlerBuilder::redeliver_at_once). See
    /// [`HandlerBuilder::retry`] for where the default comes from.
    pub fn retry_policy(&self) -> Option<RetryPolicy> {
        match self.runtime.retry {
            Retries::Backoff(policy) => Some(policy),
            Retries::AtOnce => None,
        }
    }

    /// Stop taking messages, let in-flight handlers finish within
    /// `deadline`, then stop the rest (their messages are redelivered, never
    /// acked unprocessed).
    pub async fn shutdown(mut self, deadline: Duration) -> HandlerReport {
        self.close.close();
        let until = tokio::time::Instant::now() + deadline;
        let mut abandoned = 0;
        if let Some(mut driver) = self.driver.take() {
            match tokio::time::timeout_at(until, &mut driver).await {
                Ok(Ok(mut running)) => {
                    let drained = tokio::time::timeout_at(until, async {
                        while running.join_next().await.is_some() {}
                    })
                    .await;
                    if drained.is_err() {
                        abandoned = running.len();
                        running.abort_all();
                        while running.join_next().await.is_some() {}
                    }
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    // The driver still waits for a slot that hung calls
                    // hold: stop it, and with it every call it started.
                    abandoned = self.concurrency - self.limit.available_permits();
                    driver.abort();
                    let _ = driver.await;
                }
            }
        }
        let counts = &self.runtime.counts;
        HandlerReport {
            acked: counts.ok.load(Ordering::Relaxed),
            retried: counts.retried.load(Ordering::Relaxed),
            dead_lettered: counts.dead.load(Ordering::Relaxed),
            deferred: counts.deferred.load(Ordering::Relaxed),
            abandoned,
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.close.close();
    }
}

/// Made here, where the bus is: the runtime's layers do not know it.
impl Dedupe {
    /// Dedupe against the ids kept by `bus`'s store for `window` (1 ms –
    /// 7 days), which survive a restart: SQLite's and PostgreSQL's
    /// `processed` table, a NATS stream, a Kafka topic; in memory
    /// on the memory store. `UNAVAILABLE` on a store that keeps none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::dedupe::Dedupe;
    /// # fn main() -> herald::Result<()> {
    /// let bus = herald::Bus::memory();
    /// let handler = bus
    ///     .handler("payments.>")
    ///     .group("ledger")
    ///     .layer(Dedupe::in_store(&bus, Duration::from_secs(24 * 3600))?);
    /// # drop(handler);
    /// # Ok(()) }
    /// ```
    pub fn in_store(bus: &Bus, window: Duration) -> Result<Dedupe> {
        Ok(Dedupe::shared(bus.inner.transport.processed_ids(window)?))
    }
}

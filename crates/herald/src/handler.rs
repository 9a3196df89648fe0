//! The handler runtime: consume loops users do not write by hand.
//!
//! Owns [`HandlerBuilder`] and [`Handler`]: a consumer-group subscription
//! whose deliveries run a handler concurrently (up to a limit), each inside
//! the message's correlation context. The outcome settles the delivery: `Ok`
//! acks, a retryable error (or a panic) nacks for redelivery, a terminal
//! error dead-letters at once. Events of one `key` are never handled
//! concurrently and always in order — the group delivers a key's next event
//! only after the previous one is settled — while different keys run in
//! parallel. [`Handler::shutdown`] stops taking messages, lets in-flight
//! handlers finish within a deadline, and leaves the rest to be redelivered:
//! nothing is acked unprocessed.
//!
//! Middleware (retry with backoff, circuit breaker, rate limits, dedupe,
//! metrics) layers on top of this in later work; this module is the loop.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bus::{catch_panic, Bus};
use crate::context::Context;
use crate::delivery::Outcome;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::subscription::{CloseHandle, StartPosition};

/// Handlers running at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Options of a handler; `.run(handler)` starts it. Built by [`Bus::handler`].
#[must_use = "a handler starts with .run(..)"]
pub struct HandlerBuilder {
    bus: Bus,
    pattern: String,
    group: Option<String>,
    concurrency: usize,
    start: Option<StartPosition>,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    observer: Option<Arc<dyn HandlerObserver>>,
}

/// How one handler call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Handled; the message is acked.
    Acked,
    /// Failed retryably (or panicked, or timed out); it will be redelivered.
    Retried,
    /// Failed terminally or ran out of retries; it is dead-lettered.
    DeadLettered,
}

/// Sees every handler call: what, how long, how it ended. The hook the
/// metrics layer plugs into.
pub trait HandlerObserver: Send + Sync + 'static {
    /// `envelope` was handled in `elapsed` with `outcome`.
    fn handled(&self, envelope: &Envelope, elapsed: Duration, outcome: HandlerOutcome);
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
        HandlerBuilder {
            bus: self.clone(),
            pattern: pattern.to_owned(),
            group: None,
            concurrency: DEFAULT_CONCURRENCY,
            start: None,
            retry: None,
            timeout: None,
            observer: None,
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

    /// Where a new group starts (default from the bus's config).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// Retry retryable failures (and panics) by `policy`: redeliver after
    /// the policy's backoff, and dead-letter once it gives up. Without a
    /// policy a failure is redelivered at once, up to the transport's
    /// `max_deliver` (keep the policy's attempts below it).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
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

    /// Subscribe and start handling with `handler`.
    pub async fn run<F, Fut>(self, handler: F) -> Result<Handler>
    where
        F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let Some(group) = self.group else {
            return Err(Error::validation(
                "a handler needs a consumer group: .group(name)",
            ));
        };
        crate::config::in_range("concurrency", self.concurrency, 1, 10_000)?;
        if let Some(policy) = &self.retry {
            policy.validate()?;
        }
        let retry = self.retry;
        let timeout = self.timeout;
        let observer = self.observer;
        if let Some(t) = timeout {
            crate::config::in_range("timeout", t.as_secs_f64(), 0.001, 3600.0)?;
        }
        let mut subscribe = self.bus.subscribe_raw(&self.pattern).group(group);
        if let Some(start) = self.start {
            subscribe = subscribe.start(start);
        }
        let mut sub = subscribe.await?;
        let close = sub.close_handle();
        let counts = Arc::new(Counts::default());
        let handler = Arc::new(handler);
        let (counts_loop, limit) = (counts.clone(), Arc::new(Semaphore::new(self.concurrency)));
        let driver = tokio::spawn(async move {
            let mut running = JoinSet::new();
            while let Some(item) = sub.next().await {
                let Ok(delivery) = item else { continue };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (handler, counts, observer) =
                    (handler.clone(), counts_loop.clone(), observer.clone());
                running.spawn(async move {
                    let env = delivery.shared_envelope().clone();
                    let began = std::time::Instant::now();
                    let handled = handler(env.clone());
                    let limited = async {
                        match timeout {
                            None => handled.await,
                            Some(limit) => tokio::time::timeout(limit, handled)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(Error::new(
                                        crate::error::ErrorCode::Timeout,
                                        format!("handler took longer than {limit:?}"),
                                    ))
                                }),
                        }
                    };
                    let run = Context::of(&env).scope(catch_panic(
                        || format!("handler of `{}`", env.topic()),
                        async { Ok(limited.await) },
                    ));
                    // A panic is a retryable failure; the handler's own errors keep their verdict.
                    let result = run
                        .await
                        .unwrap_or_else(|panic| Err(panic.with_retryable(true)));
                    let outcome = match result {
                        Ok(()) => Outcome::Ack,
                        Err(e) if e.retryable() => match retry {
                            None => Outcome::Nack {
                                delay: None,
                                reason: Some(e.to_string()),
                            },
                            Some(policy) => {
                                let age = (chrono::Utc::now() - env.timestamp())
                                    .to_std()
                                    .unwrap_or_default();
                                if policy.allows(env.attempt(), age) {
                                    Outcome::Nack {
                                        delay: Some(policy.delay(env.attempt() - 1)),
                                        reason: Some(e.to_string()),
                                    }
                                } else {
                                    Outcome::Term {
                                        code: e.code(),
                                        reason: format!(
                                            "retries exhausted after {} attempts: {}",
                                            env.attempt(),
                                            e.message()
                                        ),
                                    }
                                }
                            }
                        },
                        Err(e) => Outcome::Term {
                            code: e.code(),
                            reason: e.message().to_owned(),
                        },
                    };
                    let observed = match &outcome {
                        Outcome::Ack => HandlerOutcome::Acked,
                        Outcome::Nack { .. } => HandlerOutcome::Retried,
                        Outcome::Term { .. } => HandlerOutcome::DeadLettered,
                    };
                    counts.add(observed);
                    if let Some(observer) = &observer {
                        observer.handled(&env, began.elapsed(), observed);
                    }
                    let _ = delivery.finish(outcome).await;
                    drop(permit);
                });
                while running.try_join_next().is_some() {}
            }
            running
        });
        Ok(Handler {
            close,
            driver: Some(driver),
            counts,
        })
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
}

impl Counts {
    fn add(&self, outcome: HandlerOutcome) {
        let counter = match outcome {
            HandlerOutcome::Acked => &self.ok,
            HandlerOutcome::Retried => &self.retried,
            HandlerOutcome::DeadLettered => &self.dead,
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
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counts").finish_non_exhaustive()
    }
}

/// How a handler ended and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerReport {
    /// Messages handled and acked.
    pub acked: u64,
    /// Failures handed back for redelivery (retryable errors and panics).
    pub retried: u64,
    /// Messages dead-lettered on a terminal error.
    pub dead_lettered: u64,
    /// In-flight handlers still running at the deadline, stopped unsettled:
    /// their messages will be redelivered.
    pub abandoned: usize,
}

impl Handler {
    /// Stop taking messages, let in-flight handlers finish within
    /// `deadline`, then stop the rest (their messages are redelivered, never
    /// acked unprocessed).
    pub async fn shutdown(mut self, deadline: Duration) -> HandlerReport {
        self.close.close();
        let mut abandoned = 0;
        let driver = self.driver.take();
        if let Some(Ok(mut running)) = futures_util::future::OptionFuture::from(driver).await {
            let drained = tokio::time::timeout(deadline, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                abandoned = running.len();
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
        HandlerReport {
            acked: self.counts.ok.load(Ordering::Relaxed),
            retried: self.counts.retried.load(Ordering::Relaxed),
            dead_lettered: self.counts.dead.load(Ordering::Relaxed),
            abandoned,
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.close.close();
    }
}

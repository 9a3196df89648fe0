//! Circuit breaker: stop calling a dependency that keeps failing.
//!
//! Owns [`CircuitBreaker`] and its [`BreakerState`]. Closed, calls go
//! through; after `threshold` consecutive retryable failures it opens and
//! refuses calls; after `reset_timeout` it lets one trial call through
//! (half-open): success closes it, failure opens it again. Terminal errors
//! say nothing about the dependency's health and are not counted
//! (DESIGN.md §6).
//!
//! As a handler [`Layer`] a refused call becomes an [`Error::defer`]: the
//! message goes back to the transport to be redelivered when the breaker
//! may let it through, without counting a delivery attempt, so an outage
//! loses nothing and dead-letters nothing. On the publish path
//! ([`BusBuilder::publish_breaker`](crate::BusBuilder::publish_breaker)) a
//! refused publish fails fast with `UNAVAILABLE`. Time is tokio's, so tests
//! can drive it with paused time.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{in_range, DeliveryConfig};
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, Result};
use crate::observe::instrument::BREAKER_STATE;
use crate::observe::metrics::{Gauge, Metrics};
use crate::runtime::middleware::{Effects, Layer, Next};

/// Consecutive failures that open the breaker (`HERALD_CIRCUIT_BREAKER_THRESHOLD`).
pub const DEFAULT_THRESHOLD: u32 = crate::config::DEFAULT_BREAKER_THRESHOLD;
/// How long an open breaker waits before a trial call
/// (`HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT`).
pub const DEFAULT_RESET_TIMEOUT: Duration = crate::config::DEFAULT_BREAKER_RESET_TIMEOUT;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the reset timeout has passed.
    Open,
    /// One trial call is allowed; its result closes or reopens the breaker.
    HalfOpen,
}

/// A circuit breaker, shared by clones (one breaker guarding several
/// handlers counts their failures together).
///
/// ```
/// use std::time::Duration;
/// use herald::breaker::{BreakerState, CircuitBreaker};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let breaker = CircuitBreaker::builder()
///     .threshold(3)
///     .reset_timeout(Duration::from_secs(10))
///     .build()?;
/// let handler = herald::Bus::memory()
///     .handler("payments.>")
///     .group("ledger")
///     .layer(breaker.clone());
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # drop(handler);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    threshold: u32,
    reset_timeout: Duration,
    state: Mutex<Tally>,
    changes: watch::Sender<BreakerState>,
    /// Gauges this breaker's state is exported to.
    gauges: Mutex<Vec<Gauge>>,
}

struct Tally {
    state: BreakerState,
    failures: u32,
    /// When it last opened; while half-open, when the trial began.
    opened_at: Instant,
    trial: bool,
}

/// Options of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a breaker is made by .build()"]
pub struct CircuitBreakerBuilder {
    threshold: u32,
    reset_timeout: Duration,
}

/// Leave to make one call through a breaker; report how it went with
/// [`succeeded`](Permit::succeeded) or [`failed`](Permit::failed). Dropped
/// unreported, it counts as neither (a half-open breaker then allows another
/// trial).
#[must_use = "report the call's result on the permit"]
pub struct Permit {
    shared: Arc<Shared>,
    trial: bool,
    reported: bool,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::builder()
            .build()
            .expect("the defaults are in range")
    }
}

impl CircuitBreaker {
    /// A breaker with the defaults ([`DEFAULT_THRESHOLD`], [`DEFAULT_RESET_TIMEOUT`]).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            threshold: DEFAULT_THRESHOLD,
            reset_timeout: DEFAULT_RESET_TIMEOUT,
        }
    }

    /// A breaker with the defaults overridden by
    /// `HERALD_CIRCUIT_BREAKER_THRESHOLD` and
    /// `HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT` (seconds), validated with the
    /// other delivery settings ([`DeliveryConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::from_config(&DeliveryConfig::from_env()?)
    }

    /// A breaker with the settings `delivery` carries.
    ///
    /// ```
    /// use herald::breaker::CircuitBreaker;
    /// use herald::config::DeliveryConfig;
    /// let b = CircuitBreaker::from_config(&DeliveryConfig::default().breaker_threshold(2)).unwrap();
    /// # drop(b);
    /// ```
    pub fn from_config(delivery: &DeliveryConfig) -> Result<Self> {
        CircuitBreaker::builder()
            .threshold(delivery.breaker_threshold_count())
            .reset_timeout(delivery.breaker_reset())
            .build()
    }

    /// The current state. An open breaker whose reset timeout has passed
    /// reads `Open` until a call makes it half-open.
    pub fn state(&self) -> BreakerState {
        self.shared.state.lock().state
    }

    /// Export this breaker's state to `metrics` as gauge
    /// [`BREAKER_STATE`]`{breaker="name"}` (0 closed, 1 half-open, 2 open),
    /// now and at every change. A bus exports its publish breaker as
    /// `publish`.
    ///
    /// ```
    /// use herald::{breaker::CircuitBreaker, instrument::BREAKER_STATE, Bus};
    /// let bus = Bus::memory();
    /// let breaker = CircuitBreaker::default();
    /// breaker.export(bus.metrics(), "payments");
    /// assert_eq!(bus.metrics().gauge(BREAKER_STATE, &[("breaker", "payments")]).get(), 0.0);
    /// ```
    pub fn export(&self, metrics: &Metrics, name: &str) {
        let gauge = metrics.gauge(BREAKER_STATE, &[("breaker", name)]);
        let t = self.shared.state.lock();
        gauge.set(gauge_value(t.state));
        self.shared.gauges.lock().push(gauge);
    }

    /// Every state change, as a `watch` channel.
    pub fn watch(&self) -> watch::Receiver<BreakerState> {
        self.shared.changes.subscribe()
    }

    /// Ask to make a call: a [`Permit`], or how long until the breaker may
    /// allow one.
    pub fn try_acquire(&self) -> std::result::Result<Permit, Duration> {
        let shared = &self.shared;
        let mut t = shared.state.lock();
        let trial = match t.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                let reopens = t.opened_at + shared.reset_timeout;
                let now = Instant::now();
                if now < reopens {
                    return Err(reopens - now);
                }
                shared.set(&mut t, BreakerState::HalfOpen);
                t.trial = true;
                t.opened_at = now;
                true
            }
            // A trial gets one reset timeout to report; one that never does
            // (a hung call) does not keep the breaker half-open for good.
            BreakerState::HalfOpen if t.trial => {
                let expires = t.opened_at + shared.reset_timeout;
                let now = Instant::now();
                if now < expires {
                    return Err((expires - now).min(Duration::from_secs(1)));
                }
                t.opened_at = now;
                true
            }
            BreakerState::HalfOpen => {
                t.trial = true;
                t.opened_at = Instant::now();
                true
            }
        };
        Ok(Permit {
            shared: shared.clone(),
            trial,
            reported: false,
        })
    }
}

impl CircuitBreakerBuilder {
    /// Consecutive retryable failures that open the breaker, 1–100.
    pub fn threshold(mut self, n: u32) -> Self {
        self.threshold = n;
        self
    }

    /// How long it stays open before a trial call: 1 ms–1 hour (the
    /// environment variable allows 1 s–1 hour; shorter is for tests).
    pub fn reset_timeout(mut self, d: Duration) -> Self {
        self.reset_timeout = d;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<CircuitBreaker> {
        in_range("HERALD_CIRCUIT_BREAKER_THRESHOLD", self.threshold, 1, 100)?;
        in_range(
            "HERALD_CIRCUIT_BREAKER_RESET_TIMEOUT",
            self.reset_timeout.as_secs_f64(),
            0.001,
            3600.0,
        )?;
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                threshold: self.threshold,
                reset_timeout: self.reset_timeout,
                state: Mutex::new(Tally {
                    state: BreakerState::Closed,
                    failures: 0,
                    opened_at: Instant::now(),
                    trial: false,
                }),
                changes: watch::Sender::new(BreakerState::Closed),
                gauges: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// A state as [`BREAKER_STATE`]'s value.
fn gauge_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

impl Shared {
    fn set(&self, t: &mut Tally, state: BreakerState) {
        if t.state != state {
            t.state = state;
            self.changes.send_replace(state);
            for g in self.gauges.lock().iter() {
                g.set(gauge_value(state));
            }
        }
    }
}

impl Permit {
    /// The call succeeded: a half-open breaker closes.
    pub fn succeeded(mut self) {
        self.reported = true;
        let mut t = self.shared.state.lock();
        t.failures = 0;
        if self.trial {
            t.trial = false;
            self.shared.set(&mut t, BreakerState::Closed);
        }
    }

    /// The call failed: a trial reopens the breaker, and enough consecutive
    /// failures open a closed one.
    pub fn failed(mut self) {
        self.reported = true;
        let shared = &self.shared;
        let mut t = shared.state.lock();
        t.failures = t.failures.saturating_add(1);
        let opens =
            self.trial || (t.state == BreakerState::Closed && t.failures >= shared.threshold);
        if self.trial {
            t.trial = false;
        }
        if opens {
            t.opened_at = Instant::now();
            shared.set(&mut t, BreakerState::Open);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.trial && !self.reported {
            self.shared.state.lock().trial = false;
        }
    }
}

impl Layer for CircuitBreaker {
    fn refusing(&self) -> Option<Box<dyn Fn() -> bool + Send + Sync>> {
        let breaker = self.clone();
        Some(Box::new(move || breaker.state() == BreakerState::Open))
    }

    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            let permit = self.try_acquire().map_err(|wait| {
                Error::defer(wait, format!("circuit breaker is open; retry in {wait:?}"))
            })?;
            let result = next.run(envelope).await;
            match &result {
                Ok(_) => permit.succeeded(),
                Err(e) if e.retryable() && e.deferred().is_none() => permit.failed(),
                Err(_) => drop(permit),
            }
            result
        })
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("threshold", &self.shared.threshold)
            .field("reset_timeout", &self.shared.reset_timeout)
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::builder()
            .threshold(3)
            .reset_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_half_opens_and_closes() {
        let b = breaker();
        let mut changes = b.watch();
        for _ in 0..2 {
            b.try_acquire().unwrap().failed();
        }
        b.try_acquire().unwrap().succeeded();
        for _ in 0..2 {
            b.try_acquire().unwrap().failed();
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), BreakerState::Open);

        let wait = b.try_acquire().err().expect("open refuses");
        assert_eq!(wait, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.try_acquire().err(), Some(Duration::from_secs(6)));

        tokio::time::advance(Duration::from_secs(6)).await;
        let trial = b.try_acquire().expect("half-open lets one trial through");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_err(), "only one trial at a time");
        trial.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_a_full_reset_timeout() {
        let b = breaker();
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.try_acquire().err(), Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_lets_the_next_call_try() {
        let b = breaker();
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire().expect("a new trial").succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_never_reports_expires_after_a_reset_timeout() {
        let b = breaker();
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let hung = b.try_acquire().expect("the trial");
        assert!(b.try_acquire().is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().expect("a new trial").succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        drop(hung);
    }

    #[test]
    fn out_of_range_options_are_refused() {
        assert!(CircuitBreaker::builder().threshold(0).build().is_err());
        assert!(CircuitBreaker::builder()
            .reset_timeout(Duration::from_secs(7200))
            .build()
            .is_err());
    }
}

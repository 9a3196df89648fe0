//! Service-level objectives over [`metrics`](crate::observe::metrics), checked
//! periodically; a violation is published on the bus itself as
//! [`VIOLATION_TOPIC`], at most once per SLO per window (DESIGN.md §7).
//!
//! Owns [`Slo`] (metric, percentile, threshold, minimum sample count),
//! [`Violation`] (what a broken SLO reports), and [`Monitor`]: the SLOs, their
//! rate limits and the check loop. Does not own the metrics or how they are
//! recorded, nor any export format.
//!
//! - [`Monitor::check_all`] reports every SLO broken now. A metric without
//!   samples (or with fewer than the SLO's minimum) never violates; several
//!   SLOs on one metric are independent.
//! - [`Monitor::check_and_report`] is one step of the loop: the violations
//!   whose SLO has not reported within the window (default
//!   [`DEFAULT_WINDOW`], each SLO its own; re-registering a metric resets
//!   its SLOs' windows) are published, or logged at `warn` without a bus.
//!   A publish that fails or waits longer than [`PUBLISH_TIMEOUT`] is logged
//!   and the loop goes on.
//! - [`Monitor::start`] runs that step every interval (default
//!   [`DEFAULT_INTERVAL`]) on a task of its own; a second `start` does not
//!   start a second loop; a step slower than the interval delays the next
//!   (they never overlap); a step over [`SLOW_CHECK`] logs a warning; the
//!   step yields to the runtime between SLOs so it never holds a worker for
//!   long.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
//! use herald::metrics::{Metrics, Percentile};
//! use herald::slo::{Monitor, Slo};
//! let metrics = Metrics::new();
//! let latency = metrics.register("dispatch_seconds");
//! let monitor = Monitor::builder(metrics).build()?;
//! monitor.add(Slo::new("dispatch_seconds", Percentile::P95, 0.001))?;
//! assert!(monitor.check_all().is_empty(), "no samples, no violation");
//! latency.record(0.002);
//! let v = &monitor.check_all()[0];
//! assert_eq!((v.metric.as_str(), v.actual), ("dispatch_seconds", 0.002));
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::model::delivery::BoxFuture;
use crate::model::error::{Error, Result};
use crate::model::message::Message;
use crate::observe::metrics::{Metrics, Percentile};

/// The topic violations are published on.
pub const VIOLATION_TOPIC: &str = "perf.slo_violation";

/// Violations a monitor reported, by `metric` (a counter in its registry).
pub const SLO_VIOLATIONS: &str = "herald_slo_violations_total";

/// At most one violation per SLO per this long, unless told otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// How often the loop checks, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A check step longer than this logs a warning.
pub const SLOW_CHECK: Duration = Duration::from_millis(5);

/// How long the loop waits for one violation's publish before logging it
/// as failed and going on.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// An objective: `percentile` of `metric` stays at or under `threshold`;
/// or, made with [`Slo::gauge`], every series of a gauge does.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    metric: String,
    percentile: Percentile,
    threshold: f64,
    min_samples: usize,
    gauge: bool,
}

impl Slo {
    /// `percentile` of `metric` must stay at or under `threshold` (in the
    /// metric's unit; timers record seconds).
    pub fn new(metric: impl Into<String>, percentile: Percentile, threshold: f64) -> Slo {
        Slo {
            metric: metric.into(),
            percentile,
            threshold,
            min_samples: 1,
            gauge: false,
        }
    }

    /// Every series of the gauge `metric` (any labels) must stay at or under
    /// `threshold`; a violation reports the highest as its `max`.
    ///
    /// ```
    /// use herald::metrics::Metrics;
    /// use herald::slo::{Monitor, Slo};
    /// let metrics = Metrics::new();
    /// let monitor = Monitor::builder(metrics.clone()).build().unwrap();
    /// monitor.add(Slo::gauge("stalled", 0.0)).unwrap();
    /// metrics.gauge("stalled", &[("group", "a")]).set(0.0);
    /// assert!(monitor.check_all().is_empty());
    /// metrics.gauge("stalled", &[("group", "b")]).set(1.0);
    /// assert_eq!(monitor.check_all()[0].actual, 1.0);
    /// ```
    pub fn gauge(metric: impl Into<String>, threshold: f64) -> Slo {
        Slo {
            gauge: true,
            ..Slo::new(metric, Percentile::MAX, threshold)
        }
    }

    /// Judge only once the metric holds `n` samples (default 1).
    pub fn min_samples(mut self, n: usize) -> Slo {
        self.min_samples = n.max(1);
        self
    }

    /// The metric watched.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The percentile watched.
    pub fn percentile(&self) -> Percentile {
        self.percentile
    }

    /// The highest value that keeps the objective.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    fn validate(&self) -> Result<()> {
        if self.metric.is_empty() {
            return Err(Error::validation("an SLO needs a metric name"));
        }
        if !self.threshold.is_finite() {
            return Err(Error::validation(format!(
                "SLO threshold {} of `{}` is not allowed: expected a finite number",
                self.threshold, self.metric
            )));
        }
        Ok(())
    }
}

/// A broken SLO: the payload of [`VIOLATION_TOPIC`] events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The metric.
    pub metric: String,
    /// The percentile that broke (`p95`, `max`, …).
    pub percentile: Percentile,
    /// The SLO's threshold.
    pub threshold: f64,
    /// The percentile's value when checked.
    pub actual: f64,
    /// When it was checked.
    pub timestamp: DateTime<Utc>,
}

/// Where a [`Monitor`] publishes its violations: the [`Bus`](crate::Bus)
/// implements it, so a monitor never needs the bus's type.
pub trait ViolationSink: Send + Sync + std::fmt::Debug + 'static {
    /// Publish one violation message; `Ok` once it is appended.
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>>;
}

/// SLOs over a [`Metrics`] registry, their rate limits and the check loop.
/// Cloning shares it. See the [module docs](self).
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    sink: Option<Arc<dyn ViolationSink>>,
    window: Duration,
    slos: Mutex<Vec<Watched>>,
    running: Mutex<Option<Running>>,
    checks: AtomicU64,
    /// Run before each check: what brings gauges up to date.
    before: Mutex<Vec<Arc<dyn Fn() + Send + Sync>>>,
}

struct Watched {
    slo: Slo,
    /// When it last reported, and its metric's generation then.
    reported: Option<(Instant, u64)>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("slos", &self.inner.slos.lock().len())
            .field("window", &self.inner.window)
            .field("running", &self.is_running())
            .finish()
    }
}

/// Builds a [`Monitor`]; see [`Monitor::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the monitor"]
pub struct MonitorBuilder {
    metrics: Metrics,
    sink: Option<Arc<dyn ViolationSink>>,
    window: Duration,
}

impl MonitorBuilder {
    /// Publish violations on `bus` (a [`Bus`](crate::Bus), or any other
    /// [`ViolationSink`]; default: log them at `warn`).
    pub fn bus(mut self, bus: impl ViolationSink) -> Self {
        self.sink = Some(Arc::new(bus));
        self
    }

    /// At most one violation per SLO per `window` (default
    /// [`DEFAULT_WINDOW`]; 1 ms – 1 day).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Monitor> {
        in_range("window", self.window)?;
        Ok(Monitor {
            inner: Arc::new(Inner {
                metrics: self.metrics,
                sink: self.sink,
                window: self.window,
                slos: Mutex::new(Vec::new()),
                running: Mutex::new(None),
                checks: AtomicU64::new(0),
                before: Mutex::new(Vec::new()),
            }),
        })
    }
}

fn in_range(what: &str, d: Duration) -> Result<()> {
    if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
        return Err(Error::validation(format!(
            "SLO {what} {d:?} is not allowed: expected 1 ms – 1 day"
        )));
    }
    Ok(())
}

impl Monitor {
    /// A monitor of `metrics`' SLOs.
    pub fn builder(metrics: Metrics) -> MonitorBuilder {
        MonitorBuilder {
            metrics,
            sink: None,
            window: DEFAULT_WINDOW,
        }
    }

    /// Watch `slo` (a `VALIDATION` error for an empty metric name or a
    /// threshold that is not finite). The metric need not exist yet.
    pub fn add(&self, slo: Slo) -> Result<()> {
        slo.validate()?;
        self.inner.slos.lock().push(Watched {
            slo,
            reported: None,
        });
        Ok(())
    }

    /// The SLOs watched.
    pub fn slos(&self) -> Vec<Slo> {
        self.inner
            .slos
            .lock()
            .iter()
            .map(|w| w.slo.clone())
            .collect()
    }

    /// Run `refresh` before each check (it brings gauges up to date: the
    /// bus's consumer health, say).
    pub fn before_check(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.inner.before.lock().push(Arc::new(refresh));
    }

    fn refresh(&self) {
        let before: Vec<_> = self.inner.before.lock().clone();
        for refresh in before {
            refresh();
        }
    }

    /// Every SLO broken now, rate limit aside.
    pub fn check_all(&self) -> Vec<Violation> {
        self.refresh();
        let slos = self.slos();
        slos.iter().filter_map(|slo| self.check(slo)).collect()
    }

    /// One step of the loop: check every SLO (yielding between them) and
    /// report each violation whose SLO is outside its window — publish it
    /// on the bus, or log it without one. Returns the reported ones.
    pub async fn check_and_report(&self) -> Vec<Violation> {
        self.inner.checks.fetch_add(1, Ordering::Relaxed);
        self.refresh();
        let count = self.inner.slos.lock().len();
        let mut reported = Vec::new();
        for i in 0..count {
            let Some(slo) = self.inner.slos.lock().get(i).map(|w| w.slo.clone()) else {
                break;
            };
            if let Some(v) = self.check(&slo) {
                if self.take_report(i, &slo) {
                    reported.push(v);
                }
            }
            tokio::task::yield_now().await;
        }
        for v in &reported {
            self.inner
                .metrics
                .counter(SLO_VIOLATIONS, &[("metric", v.metric.as_str())])
                .inc();
            self.report(v).await;
        }
        reported
    }

    /// Run [`check_and_report`](Monitor::check_and_report) every `interval`
    /// (1 ms – 1 day) on a task of this runtime until [`stop`](Monitor::stop).
    /// Returns whether it started a loop: `false` when one already runs.
    /// `VALIDATION` for an interval out of range or outside a tokio runtime.
    pub fn start(&self, interval: Duration) -> Result<bool> {
        in_range("check interval", interval)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::validation("the SLO monitor starts inside a tokio runtime"))?;
        let mut running = self.inner.running.lock();
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(false);
        }
        let (stop, mut stopped) = watch::channel(false);
        let monitor = self.clone();
        let task = runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => return,
                }
                let began = std::time::Instant::now();
                monitor.check_and_report().await;
                let took = began.elapsed();
                if took > SLOW_CHECK {
                    tracing::warn!(took_ms = took.as_secs_f64() * 1e3, "a slow SLO check");
                }
            }
        });
        *running = Some(Running { stop, task });
        Ok(true)
    }

    /// Stop the loop and wait for it to end (a step under way finishes
    /// first). Idempotent.
    pub async fn stop(&self) {
        let running = self.inner.running.lock().take();
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    /// Whether the loop runs.
    pub fn is_running(&self) -> bool {
        self.inner
            .running
            .lock()
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Check steps run so far (by the loop or by hand).
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }

    /// The metrics watched.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What `slo` judges now: its value (the percentile, or a gauge's
    /// highest series; `None` without samples) and how many samples (or
    /// series) it has.
    pub fn reading(&self, slo: &Slo) -> (Option<f64>, usize) {
        if slo.gauge {
            let values: Vec<f64> = self
                .inner
                .metrics
                .gauges()
                .iter()
                .filter(|g| g.name() == slo.metric)
                .map(|g| g.get())
                .collect();
            let top = values.iter().copied().reduce(f64::max);
            return (top, values.len());
        }
        match self.inner.metrics.get(&slo.metric) {
            Some(m) => (m.percentile(slo.percentile), m.len()),
            None => (None, 0),
        }
    }

    fn check(&self, slo: &Slo) -> Option<Violation> {
        let (actual, samples) = self.reading(slo);
        if samples < slo.min_samples {
            return None;
        }
        let actual = actual?;
        (actual > slo.threshold).then(|| Violation {
            metric: slo.metric.clone(),
            percentile: slo.percentile,
            threshold: slo.threshold,
            actual,
            timestamp: Utc::now(),
        })
    }

    /// Whether SLO `i` may report now, marking it reported if so.
    fn take_report(&self, i: usize, slo: &Slo) -> bool {
        let generation = self
            .inner
            .metrics
            .get(&slo.metric)
            .map_or(0, |m| m.generation());
        let now = Instant::now();
        let mut slos = self.inner.slos.lock();
        let Some(w) = slos.get_mut(i) else {
            return false;
        };
        let limited = w
            .reported
            .is_some_and(|(at, g)| g == generation && now.duration_since(at) < self.inner.window);
        if !limited {
            w.reported = Some((now, generation));
        }
        !limited
    }

    async fn report(&self, v: &Violation) {
        let Some(sink) = &self.inner.sink else {
            tracing::warn!(
                metric = %v.metric,
                percentile = %v.percentile,
                threshold = v.threshold,
                actual = v.actual,
                "SLO violated"
            );
            return;
        };
        let published = match Message::json(VIOLATION_TOPIC, v) {
            Ok(message) => tokio::time::timeout(PUBLISH_TIMEOUT, sink.publish(message))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        crate::model::error::ErrorCode::Timeout,
                        "publishing an SLO violation",
                    ))
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::warn!(
                metric = %v.metric,
                percentile = %v.percentile,
                error = %e,
                "could not publish an SLO violation"
            );
        }
    }
}

//! Named metrics kept as fixed-capacity ring buffers of samples, and their
//! percentiles: cheap enough to leave on in production (DESIGN.md §7).
//!
//! Owns [`Metrics`] (the registry), [`Metric`] (one ring buffer: the last
//! `capacity` samples, default [`DEFAULT_CAPACITY`], plus a histogram of every
//! sample ever recorded over [`BUCKETS`] for exporters), [`Counter`] and
//! [`Gauge`], [`Timer`] (a guard that records the time from its start to its
//! drop, in seconds), [`Percentile`] and [`Summary`]. A metric is named by a
//! family name and optional labels; its key is the Prometheus series form,
//! `name{label="value"}`. Does not own SLOs or what happens when one breaks
//! ([`slo`](crate::observe::slo)), nor the exposition format
//! ([`prometheus`](crate::observe::prometheus)).
//!
//! A metric's buffer grows in steps of [`GROWTH`] samples as they arrive, so
//! an unused metric costs about a hundred bytes and a half-full one about half
//! a full one. Percentiles are nearest-rank over the samples in the buffer;
//! a metric without samples has none (`None`, never zero).
//!
//! ```
//! use herald::metrics::{Metrics, Percentile};
//! let metrics = Metrics::new();
//! let latency = metrics.register("publish_seconds");
//! for ms in 1..=100 {
//!     latency.record(ms as f64 / 1000.0);
//! }
//! assert_eq!(latency.percentile(Percentile::P95), Some(0.095));
//! {
//!     let _timer = latency.start_timer(); // records the elapsed seconds when dropped
//! }
//! assert_eq!(latency.len(), 101);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::model::error::{Error, Result};

/// Samples a metric keeps unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How many samples a metric's buffer grows by at a time.
pub const GROWTH: usize = 1_024;

/// Upper bounds (seconds) of the histogram every [`Metric`] keeps for
/// exporters: 1 µs to 10 s in 1-2.5-5 steps (anything above is counted in
/// the `+Inf` bucket).
pub const BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry: sampled metrics, counters and gauges by key. Cloning
/// shares it.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<RwLock<Registry>>,
}

#[derive(Default)]
struct Registry {
    samples: HashMap<Arc<str>, Metric>,
    counters: HashMap<Arc<str>, Counter>,
    gauges: HashMap<Arc<str>, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.inner.read();
        f.debug_struct("Metrics")
            .field("metrics", &r.samples.len())
            .field("counters", &r.counters.len())
            .field("gauges", &r.gauges.len())
            .finish()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The metric `name` with [`DEFAULT_CAPACITY`]: made on first use;
    /// registering it again returns the same metric, samples kept, and
    /// resets the rate limit of its SLOs' violations (a re-registration is a
    /// fresh start for alerting).
    pub fn register(&self, name: &str) -> Metric {
        self.register_with(name, &[], DEFAULT_CAPACITY)
    }

    /// As [`register`](Metrics::register), for the series of `name` with
    /// `labels`, keeping the last `capacity` samples (at least 1) when the
    /// metric is new; an existing metric keeps its capacity.
    ///
    /// ```
    /// use herald::metrics::Metrics;
    /// let metrics = Metrics::new();
    /// let m = metrics.register_with("handler_seconds", &[("group", "billing")], 1_000);
    /// assert_eq!(m.key(), r#"handler_seconds{group="billing"}"#);
    /// ```
    pub fn register_with(&self, name: &str, labels: &[(&str, &str)], capacity: usize) -> Metric {
        let series = Series::new(name, labels);
        if let Some(m) = self.inner.read().samples.get(&*series.key) {
            m.inner.generation.fetch_add(1, Ordering::Relaxed);
            return m.clone();
        }
        let mut r = self.inner.write();
        if let Some(m) = r.samples.get(&*series.key) {
            m.inner.generation.fetch_add(1, Ordering::Relaxed);
            return m.clone();
        }
        let metric = Metric::with_series(series, capacity);
        r.samples
            .insert(metric.inner.series.key.clone(), metric.clone());
        metric
    }

    /// The counter `name` with `labels`, made on first use.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        let series = Series::new(name, labels);
        if let Some(c) = self.inner.read().counters.get(&*series.key) {
            return c.clone();
        }
        let key = series.key.clone();
        self.inner
            .write()
            .counters
            .entry(key)
            .or_insert_with(|| Counter {
                inner: Arc::new((series, AtomicU64::new(0))),
            })
            .clone()
    }

    /// The gauge `name` with `labels`, made on first use (at 0).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        let series = Series::new(name, labels);
        if let Some(g) = self.inner.read().gauges.get(&*series.key) {
            return g.clone();
        }
        let key = series.key.clone();
        self.inner
            .write()
            .gauges
            .entry(key)
            .or_insert_with(|| Gauge {
                inner: Arc::new((series, AtomicU64::new(0f64.to_bits()))),
            })
            .clone()
    }

    /// The sampled metric with key `key` (`name` or `name{label="value"}`).
    pub fn get(&self, key: &str) -> Option<Metric> {
        self.inner.read().samples.get(key).cloned()
    }

    /// Every sampled metric, by key.
    pub fn all(&self) -> Vec<Metric> {
        let mut all: Vec<Metric> = self.inner.read().samples.values().cloned().collect();
        all.sort_by(|a, b| a.key().cmp(b.key()));
        all
    }

    /// Every counter, by key.
    pub fn counters(&self) -> Vec<Counter> {
        let mut all: Vec<Counter> = self.inner.read().counters.values().cloned().collect();
        all.sort_by(|a, b| a.inner.0.key.cmp(&b.inner.0.key));
        all
    }

    /// Every gauge, by key.
    pub fn gauges(&self) -> Vec<Gauge> {
        let mut all: Vec<Gauge> = self.inner.read().gauges.values().cloned().collect();
        all.sort_by(|a, b| a.inner.0.key.cmp(&b.inner.0.key));
        all
    }

    /// Bytes the registry's sampled metrics hold (their buffers and
    /// bookkeeping).
    pub fn memory_bytes(&self) -> usize {
        self.inner
            .read()
            .samples
            .values()
            .map(Metric::memory_bytes)
            .sum()
    }
}

/// A family name, its labels, and the series key they make.
#[derive(Debug)]
struct Series {
    name: Arc<str>,
    labels: Vec<(String, String)>,
    key: Arc<str>,
}

impl Series {
    fn new(name: &str, labels: &[(&str, &str)]) -> Series {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            Arc::from(name)
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}=\"{}\"",
                        v.replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                    )
                })
                .collect();
            Arc::from(format!("{name}{{{}}}", inner.join(",")))
        };
        Series {
            name: Arc::from(name),
            labels,
            key,
        }
    }
}

/// A count that only goes up. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Counter {
    inner: Arc<(Series, AtomicU64)>,
}

impl Counter {
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.inner.1.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.inner.1.load(Ordering::Relaxed)
    }

    /// The family name.
    pub fn name(&self) -> &str {
        &self.inner.0.name
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> &[(String, String)] {
        &self.inner.0.labels
    }
}

/// A value that goes up and down. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Gauge {
    inner: Arc<(Series, AtomicU64)>,
}

impl Gauge {
    /// Set the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.inner.1.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.inner.1.load(Ordering::Relaxed))
    }

    /// The family name.
    pub fn name(&self) -> &str {
        &self.inner.0.name
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> &[(String, String)] {
        &self.inner.0.labels
    }
}

/// One metric: the last `capacity` samples. Cloning shares it.
#[derive(Clone)]
pub struct Metric {
    inner: Arc<MetricInner>,
}

struct MetricInner {
    series: Series,
    ring: Mutex<Ring>,
    /// Bumped by each re-registration; SLOs compare it to reset their rate limit.
    generation: AtomicU64,
}

struct Ring {
    samples: Vec<f64>,
    capacity: usize,
    /// Where the next sample goes once the buffer is full.
    next: usize,
    /// Samples ever recorded.
    recorded: u64,
    /// Their sum.
    sum: f64,
    /// How many fell in each of [`BUCKETS`] (not cumulative), and above.
    buckets: [u64; BUCKETS.len() + 1],
}

impl fmt::Debug for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metric")
            .field("key", &self.key())
            .field("len", &self.len())
            .finish()
    }
}

impl Metric {
    /// A metric outside any registry, keeping the last `capacity` samples
    /// (at least 1).
    pub fn new(name: &str, capacity: usize) -> Metric {
        Metric::with_series(Series::new(name, &[]), capacity)
    }

    fn with_series(series: Series, capacity: usize) -> Metric {
        Metric {
            inner: Arc::new(MetricInner {
                series,
                ring: Mutex::new(Ring {
                    samples: Vec::new(),
                    capacity: capacity.max(1),
                    next: 0,
                    recorded: 0,
                    sum: 0.0,
                    buckets: [0; BUCKETS.len() + 1],
                }),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The family name.
    pub fn name(&self) -> &str {
        &self.inner.series.name
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> &[(String, String)] {
        &self.inner.series.labels
    }

    /// The series key: the name, or `name{label="value",…}`.
    pub fn key(&self) -> &str {
        &self.inner.series.key
    }

    /// Every sample ever recorded as a histogram over [`BUCKETS`]: the
    /// count in each bucket (not cumulative; the last is above 10 s), their
    /// sum and their number.
    pub fn histogram(&self) -> Histogram {
        let ring = self.inner.ring.lock();
        Histogram {
            buckets: ring.buckets,
            sum: ring.sum,
            count: ring.recorded,
        }
    }

    /// Record `value`; once the buffer is full it replaces the oldest sample.
    /// A NaN is ignored (it has no rank).
    #[inline]
    pub fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let mut ring = self.inner.ring.lock();
        ring.push(value);
    }

    /// A guard that records the seconds from now until it drops.
    #[inline]
    pub fn start_timer(&self) -> Timer {
        Timer {
            metric: self.clone(),
            start: Instant::now(),
        }
    }

    /// Samples in the buffer.
    pub fn len(&self) -> usize {
        self.inner.ring.lock().samples.len()
    }

    /// Whether the buffer has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples ever recorded (those the buffer dropped included).
    pub fn recorded(&self) -> u64 {
        self.inner.ring.lock().recorded
    }

    /// How many samples the buffer keeps.
    pub fn capacity(&self) -> usize {
        self.inner.ring.lock().capacity
    }

    /// The samples in the buffer, oldest first.
    pub fn samples(&self) -> Vec<f64> {
        let ring = self.inner.ring.lock();
        let mut out = Vec::with_capacity(ring.samples.len());
        out.extend_from_slice(&ring.samples[ring.next..]);
        out.extend_from_slice(&ring.samples[..ring.next]);
        out
    }

    /// The `p` percentile of the buffer, `None` when it is empty.
    pub fn percentile(&self, p: Percentile) -> Option<f64> {
        self.percentiles(&[p]).map(|v| v[0])
    }

    /// The percentiles `ps` of the buffer, in the order asked, or `None`
    /// when it is empty. One copy of the buffer and one selection per
    /// percentile: cheaper than asking one at a time.
    pub fn percentiles(&self, ps: &[Percentile]) -> Option<Vec<f64>> {
        let mut samples = {
            let ring = self.inner.ring.lock();
            if ring.samples.is_empty() {
                return None;
            }
            ring.samples.clone()
        };
        Some(select(&mut samples, ps))
    }

    /// p50, p95, p99 and max of the buffer, or `None` when it is empty.
    pub fn summary(&self) -> Option<Summary> {
        let (v, count) = {
            let ring = self.inner.ring.lock();
            if ring.samples.is_empty() {
                return None;
            }
            (ring.samples.clone(), ring.samples.len())
        };
        let mut v = v;
        let p = select(
            &mut v,
            &[
                Percentile::P50,
                Percentile::P95,
                Percentile::P99,
                Percentile::MAX,
            ],
        );
        Some(Summary {
            count,
            p50: p[0],
            p95: p[1],
            p99: p[2],
            max: p[3],
        })
    }

    /// Bytes this metric holds: its buffer as allocated, and bookkeeping.
    pub fn memory_bytes(&self) -> usize {
        let ring = self.inner.ring.lock();
        std::mem::size_of::<MetricInner>()
            + self.inner.series.key.len()
            + ring.samples.capacity() * std::mem::size_of::<f64>()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }
}

impl Ring {
    #[inline]
    fn push(&mut self, value: f64) {
        self.recorded += 1;
        self.sum += value;
        self.buckets[BUCKETS.partition_point(|&b| b < value)] += 1;
        if self.samples.len() < self.capacity {
            if self.samples.len() == self.samples.capacity() {
                let room = GROWTH.min(self.capacity - self.samples.len());
                self.samples.reserve_exact(room);
            }
            self.samples.push(value);
        } else {
            self.samples[self.next] = value;
            self.next = (self.next + 1) % self.capacity;
        }
    }
}

/// The nearest-rank values of `ps` in `samples` (non-empty), which it
/// reorders: one selection per percentile, each in what the last left above.
fn select(samples: &mut [f64], ps: &[Percentile]) -> Vec<f64> {
    let n = samples.len();
    let mut order: Vec<usize> = (0..ps.len()).collect();
    order.sort_by(|&a, &b| ps[a].0.total_cmp(&ps[b].0));
    let mut out = vec![0.0; ps.len()];
    let mut lo = 0;
    for i in order {
        let at = ps[i].rank(n) - 1;
        let (_, v, _) = samples[lo..].select_nth_unstable_by(at - lo, f64::total_cmp);
        out[i] = *v;
        lo = at;
    }
    out
}

/// Records the seconds from [`Metric::start_timer`] until it drops.
#[must_use = "the timer records when dropped; dropping it at once records ~0"]
pub struct Timer {
    metric: Metric,
    start: Instant,
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("metric", &self.metric.key())
            .finish()
    }
}

impl Timer {
    /// Stop now and record; the same as dropping it.
    pub fn stop(self) {}
}

impl Drop for Timer {
    #[inline]
    fn drop(&mut self) {
        self.metric.record(self.start.elapsed().as_secs_f64());
    }
}

/// A percentile: `(0, 100]`, nearest-rank. `Percentile::MAX` is the largest
/// sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentile(f64);

impl Percentile {
    /// The median.
    pub const P50: Percentile = Percentile(50.0);
    /// The 95th percentile.
    pub const P95: Percentile = Percentile(95.0);
    /// The 99th percentile.
    pub const P99: Percentile = Percentile(99.0);
    /// The largest sample.
    pub const MAX: Percentile = Percentile(100.0);

    /// The `p`th percentile; `VALIDATION` unless `0 < p <= 100`.
    ///
    /// ```
    /// use herald::metrics::Percentile;
    /// assert_eq!(Percentile::new(99.9).unwrap().to_string(), "p99.9");
    /// assert!(Percentile::new(0.0).is_err());
    /// ```
    pub fn new(p: f64) -> Result<Percentile> {
        if p > 0.0 && p <= 100.0 {
            Ok(Percentile(p))
        } else {
            Err(Error::validation(format!(
                "percentile {p} is not allowed: expected 0 < p <= 100"
            )))
        }
    }

    /// The percentile as a number in `(0, 100]`.
    pub fn value(self) -> f64 {
        self.0
    }

    /// The 1-based rank of this percentile among `n` (> 0) sorted samples.
    fn rank(self, n: usize) -> usize {
        ((self.0 / 100.0 * n as f64).ceil() as usize).clamp(1, n)
    }
}

impl fmt::Display for Percentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 100.0 {
            f.write_str("max")
        } else {
            write!(f, "p{}", self.0)
        }
    }
}

impl std::str::FromStr for Percentile {
    type Err = Error;

    /// `p50`, `p99.9`, `max`, or a bare number.
    fn from_str(s: &str) -> Result<Percentile> {
        if s == "max" {
            return Ok(Percentile::MAX);
        }
        let n = s.strip_prefix('p').unwrap_or(s);
        n.parse::<f64>()
            .map_err(|_| {
                Error::validation(format!(
                    "percentile {s:?} is not allowed: expected p50, p99.9, max or a number"
                ))
            })
            .and_then(Percentile::new)
    }
}

impl serde::Serialize for Percentile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Percentile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Every sample a metric ever recorded, bucketed; see [`Metric::histogram`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram {
    /// Samples at or under each of [`BUCKETS`] and above the one before
    /// (the last entry: above the largest bound).
    pub buckets: [u64; BUCKETS.len() + 1],
    /// Their sum.
    pub sum: f64,
    /// Their number.
    pub count: u64,
}

/// p50, p95, p99 and max of a metric's buffer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Samples in the buffer.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_over_the_buffer() {
        let m = Metric::new("m", 100);
        for v in (1..=100).rev() {
            m.record(v as f64);
        }
        let s = m.summary().unwrap();
        assert_eq!(
            (s.count, s.p50, s.p95, s.p99, s.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        let p = Percentile::new(99.9).unwrap();
        assert_eq!(
            m.percentiles(&[Percentile::MAX, Percentile::P50, p]),
            Some(vec![100.0, 50.0, 100.0]),
            "in the order asked"
        );
        assert_eq!(Metric::new("one", 10).percentile(Percentile::P50), None);
    }

    #[test]
    fn a_full_buffer_keeps_the_newest_samples() {
        let m = Metric::new("m", 3);
        for v in 1..=5 {
            m.record(v as f64);
        }
        assert_eq!(m.samples(), [3.0, 4.0, 5.0]);
        assert_eq!((m.len(), m.recorded(), m.capacity()), (3, 5, 3));
        assert_eq!(m.percentile(Percentile::P50), Some(4.0));
        m.record(f64::NAN);
        assert_eq!(m.recorded(), 5, "NaN has no rank and is not kept");
    }

    #[test]
    fn the_buffer_grows_as_samples_arrive() {
        let m = Metric::new("m", DEFAULT_CAPACITY);
        let empty = m.memory_bytes();
        assert!(empty < 400, "an empty metric holds {empty} bytes");
        for v in 0..DEFAULT_CAPACITY / 2 {
            m.record(v as f64);
        }
        let half = m.memory_bytes();
        for v in 0..DEFAULT_CAPACITY {
            m.record(v as f64);
        }
        let full = m.memory_bytes();
        assert!(full <= DEFAULT_CAPACITY * 8 + 400, "full: {full}");
        let ratio = half as f64 / full as f64;
        assert!((0.45..0.62).contains(&ratio), "half / full = {ratio}");
    }

    #[test]
    fn registering_again_returns_the_same_metric_and_a_new_generation() {
        let metrics = Metrics::new();
        let a = metrics.register("a");
        a.record(1.0);
        let g = a.generation();
        let again = metrics.register("a");
        assert_eq!(again.len(), 1, "the same buffer");
        assert_eq!(again.generation(), g + 1);
        assert_eq!(metrics.all().len(), 1);
        assert!(metrics.get("b").is_none());
    }

    #[test]
    fn labels_make_series_and_the_histogram_counts_everything() {
        let metrics = Metrics::new();
        let m = metrics.register_with("h", &[("b", "2"), ("a", "x\"y")], 2);
        assert_eq!(m.key(), r#"h{a="x\"y",b="2"}"#, "sorted, escaped");
        assert_eq!(m.labels()[0], ("a".to_owned(), "x\"y".to_owned()));
        for v in [0.5e-6, 2e-3, 2e-3, 20.0] {
            m.record(v);
        }
        let h = m.histogram();
        assert_eq!((h.count, h.sum), (4, 0.5e-6 + 4e-3 + 20.0));
        assert_eq!(h.buckets[0], 1, "at or under 1 µs");
        assert_eq!(
            h.buckets[BUCKETS.iter().position(|&b| b == 2.5e-3).unwrap()],
            2
        );
        assert_eq!(h.buckets[BUCKETS.len()], 1, "over 10 s");
        assert_eq!(
            m.len(),
            2,
            "the buffer keeps the last two; the histogram all"
        );
        let c = metrics.counter("c_total", &[("outcome", "ok")]);
        c.add(2);
        metrics.counter("c_total", &[("outcome", "ok")]).inc();
        assert_eq!(c.get(), 3);
        let g = metrics.gauge("g", &[]);
        g.set(-1.5);
        assert_eq!(metrics.gauges()[0].get(), -1.5);
    }

    #[test]
    fn timers_record_seconds() {
        let m = Metric::new("t", 10);
        let t = m.start_timer();
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.stop();
        let v = m.percentile(Percentile::MAX).unwrap();
        assert!((0.002..1.0).contains(&v), "{v}");
    }

    #[test]
    fn percentiles_parse_and_print() {
        for (s, p) in [("p50", 50.0), ("p99.9", 99.9), ("max", 100.0), ("95", 95.0)] {
            assert_eq!(s.parse::<Percentile>().unwrap().value(), p);
        }
        for bad in ["p0", "p101", "x", "pNaN", "-1"] {
            assert!(bad.parse::<Percentile>().is_err(), "{bad}");
        }
        assert_eq!(Percentile::P99.to_string(), "p99");
    }
}

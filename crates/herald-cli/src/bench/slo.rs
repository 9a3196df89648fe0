//! The SLO layer's costs (DESIGN.md §7–8): `record`, a timer's start and
//! stop, percentiles of a full buffer, `check_all` over 10 SLOs, and the
//! memory of 20 full metrics: the heap they hold, counted by the binary's
//! allocator ([`heap`](super::heap)), beside what the registry computes
//! from its capacities.
//!
//! `record` and timers cost tens of nanoseconds, below what one reading of
//! the clock resolves, so each sample times a run of [`RUN`] calls and
//! reports the cost per call.

use std::time::{Duration, Instant};

use herald::metrics::{Metric, Metrics, Percentile, DEFAULT_CAPACITY};
use herald::slo::{Monitor, Slo};
use serde::Serialize;

use super::stats::Percentiles;

/// Calls timed together for one sample of `record` and timer costs.
const RUN: usize = 100;
/// Metrics in the memory figure.
const MEMORY_METRICS: usize = 20;
/// SLOs in the `check_all` figure.
const SLOS: usize = 10;

/// What the SLO benchmark measured.
#[derive(Debug, Serialize)]
pub struct SloCosts {
    /// `record`, per call (µs).
    pub record: Percentiles,
    /// A timer's start and stop (its drop records), per timer (µs).
    pub timer: Percentiles,
    /// p50, p95, p99 and max of one full 10k-sample metric (µs).
    pub percentiles_full: Percentiles,
    /// `check_all` of 10 SLOs on 10 full metrics (µs).
    pub check_all_10: Percentiles,
    /// Bytes of one full metric.
    pub metric_full_bytes: usize,
    /// Bytes of one half-full metric.
    pub metric_half_bytes: usize,
    /// Bytes of one metric without samples.
    pub metric_empty_bytes: usize,
    /// Heap bytes 20 full metrics in one registry hold, as allocated.
    pub metrics_20_full_bytes: usize,
    /// The same as `Metrics::memory_bytes` computes it from capacities.
    pub metrics_20_full_bytes_computed: usize,
}

/// Measure, with `iterations` samples of each timing after `warmup`.
pub fn run(iterations: usize, warmup: usize) -> herald::Result<SloCosts> {
    let metric = Metric::new("bench.record", DEFAULT_CAPACITY);
    let record = per_call(iterations, warmup, |i| {
        for j in 0..RUN {
            metric.record((i * RUN + j) as f64);
        }
    });
    let timed = Metric::new("bench.timer", DEFAULT_CAPACITY);
    let timer = per_call(iterations, warmup, |_| {
        for _ in 0..RUN {
            let t = timed.start_timer();
            t.stop();
        }
    });

    let metrics = Metrics::new();
    for m in 0..SLOS {
        full(&metrics.register(&format!("bench.slo.{m}")));
    }
    let one = metrics.get("bench.slo.0").expect("registered");
    let rounds = (iterations / 10).max(200);
    let percentiles_full = timed_calls(rounds, rounds / 10, || {
        std::hint::black_box(one.summary());
    });
    let monitor = Monitor::builder(metrics.clone()).build()?;
    let ps = [Percentile::P50, Percentile::P95, Percentile::P99];
    for m in 0..SLOS {
        monitor.add(Slo::new(format!("bench.slo.{m}"), ps[m % ps.len()], 1e12))?;
    }
    let check_all_10 = timed_calls(rounds, rounds / 10, || {
        std::hint::black_box(monitor.check_all());
    });

    let empty = Metric::new("bench.empty", DEFAULT_CAPACITY);
    let half = Metric::new("bench.half", DEFAULT_CAPACITY);
    for v in 0..DEFAULT_CAPACITY / 2 {
        half.record(v as f64);
    }
    let (twenty, metrics_20_full_bytes) = super::heap::held_by(|| {
        let twenty = Metrics::new();
        for m in 0..MEMORY_METRICS {
            full(&twenty.register(&format!("bench.mem.{m}")));
        }
        twenty
    });
    Ok(SloCosts {
        record,
        timer,
        percentiles_full,
        check_all_10,
        metric_full_bytes: one.memory_bytes(),
        metric_half_bytes: half.memory_bytes(),
        metric_empty_bytes: empty.memory_bytes(),
        metrics_20_full_bytes,
        metrics_20_full_bytes_computed: twenty.memory_bytes(),
    })
}

fn full(metric: &Metric) {
    for _ in 0..DEFAULT_CAPACITY {
        metric.record(fastrand::f64());
    }
}

/// Percentiles of `f`'s time per call, where one call of `f` makes [`RUN`].
fn per_call(iterations: usize, warmup: usize, mut f: impl FnMut(usize)) -> Percentiles {
    let mut samples = Vec::with_capacity(iterations + warmup);
    for i in 0..iterations + warmup {
        let start = Instant::now();
        f(i);
        samples.push(start.elapsed() / RUN as u32);
    }
    Percentiles::of(samples, warmup)
}

/// Percentiles of `f`'s time per call.
fn timed_calls(iterations: usize, warmup: usize, mut f: impl FnMut()) -> Percentiles {
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations + warmup);
    for _ in 0..iterations + warmup {
        let start = Instant::now();
        f();
        samples.push(start.elapsed());
    }
    Percentiles::of(samples, warmup)
}

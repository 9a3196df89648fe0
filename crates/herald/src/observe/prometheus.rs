//! A [`Metrics`] registry in the Prometheus (OpenMetrics) text format, for
//! any service's `/metrics` (and `herald serve`'s).
//!
//! Owns the mapping from herald's metrics to exposition families: each
//! sampled [`Metric`](crate::observe::metrics::Metric) is a histogram over
//! [`BUCKETS`] of every sample it ever recorded (the ring buffer's
//! percentiles are for SLOs; Prometheus computes its own quantiles from the
//! buckets), each [`Counter`](crate::observe::metrics::Counter) a counter and each
//! [`Gauge`](crate::observe::metrics::Gauge) a gauge; series of one name share a
//! family. Names are made Prometheus-safe (anything outside
//! `[a-zA-Z0-9_:]` becomes `_`; a counter's `_total` suffix is the format's).
//! The writing itself is the `prometheus-client` crate's, the reference
//! implementation of the format in Rust; herald only feeds it.
//!
//! ```
//! use herald::metrics::Metrics;
//! let metrics = Metrics::new();
//! metrics.register("publish_seconds").record(0.000_3);
//! metrics.counter("dead_letters_total", &[]).inc();
//! let text = herald::prometheus::encode(&metrics);
//! assert!(text.contains("publish_seconds_bucket{le=\"0.0005\"} 1"));
//! assert!(text.contains("dead_letters_total 1"));
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::observe::metrics::{Metrics, BUCKETS};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `metrics` as OpenMetrics text, ending in `# EOF`.
pub fn encode(metrics: &Metrics) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(metrics.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail; a collector error would be ours.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    out
}

#[derive(Debug)]
struct Collect(Metrics);

/// Series of one family: their labels and what to write for each.
type Family<T> = BTreeMap<String, Vec<(Vec<(String, String)>, T)>>;

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut histograms: Family<crate::observe::metrics::Histogram> = BTreeMap::new();
        for m in self.0.all() {
            add(
                &mut histograms,
                safe_name(m.name()),
                m.labels(),
                m.histogram(),
            );
        }
        let mut counters: Family<u64> = BTreeMap::new();
        for c in self.0.counters() {
            let name = safe_name(c.name());
            let name = name.strip_suffix("_total").unwrap_or(&name).to_owned();
            add(&mut counters, name, c.labels(), c.get());
        }
        let mut gauges: Family<f64> = BTreeMap::new();
        for g in self.0.gauges() {
            add(&mut gauges, safe_name(g.name()), g.labels(), g.get());
        }

        let bounds: Vec<f64> = BUCKETS.iter().copied().chain([f64::INFINITY]).collect();
        write(&mut encoder, &histograms, MetricType::Histogram, |e, h| {
            let buckets: Vec<(f64, u64)> = bounds
                .iter()
                .copied()
                .zip(h.buckets.iter().copied())
                .collect();
            e.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
        })?;
        write(&mut encoder, &counters, MetricType::Counter, |e, v| {
            e.encode_counter::<NoLabelSet, _, u64>(v, None)
        })?;
        write(&mut encoder, &gauges, MetricType::Gauge, |e, v| {
            e.encode_gauge(v)
        })
    }
}

fn add<T>(families: &mut Family<T>, name: String, labels: &[(String, String)], value: T) {
    families
        .entry(name)
        .or_default()
        .push((labels.to_vec(), value));
}

/// Write each family of `kind`, each of its series through `value`.
fn write<T>(
    encoder: &mut DescriptorEncoder,
    families: &Family<T>,
    kind: MetricType,
    value: impl Fn(&mut MetricEncoder, &T) -> fmt::Result,
) -> fmt::Result {
    for (name, series) in families {
        let mut family = encoder.encode_descriptor(name, "", None, kind)?;
        for (labels, v) in series {
            if labels.is_empty() {
                value(&mut family, v)?;
            } else {
                value(&mut family.encode_family(labels)?, v)?;
            }
        }
    }
    Ok(())
}

/// `name` with anything outside `[a-zA-Z0-9_:]` as `_`, not starting with a
/// digit.
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

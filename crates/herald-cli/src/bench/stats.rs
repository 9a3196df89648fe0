//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// Percentiles of `samples` after dropping the first `warmup`.
    pub fn of(mut samples: Vec<Duration>, warmup: usize) -> Percentiles {
        let mut kept = samples.split_off(warmup.min(samples.len()));
        kept.sort_unstable();
        let at = |q: f64| -> f64 {
            if kept.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * kept.len() as f64).ceil() as usize).clamp(1, kept.len());
            kept[rank - 1].as_secs_f64() * 1e6
        };
        Percentiles {
            samples: kept.len(),
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_after_warmup() {
        let mut samples = vec![Duration::from_secs(9); 3];
        samples.extend((1..=100).map(Duration::from_micros));
        let p = Percentiles::of(samples, 3);
        assert_eq!(p.samples, 100);
        assert_eq!(
            (p.p50_us, p.p95_us, p.p99_us, p.max_us),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert!(Percentiles::of(Vec::new(), 0).p50_us.is_nan());
    }
}

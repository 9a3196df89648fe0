//! Retry policy: exponential backoff with jitter (DESIGN.md §6).
//!
//! Owns [`RetryPolicy`]: how long to wait before each retry and when to give
//! up. The delay before retry `n` (0-based) is `base × 2^n × jitter`, jitter
//! uniform in [0.5, 1.5], capped at `max_delay`. Only retryable errors are
//! retried. It is configuration: [`DeliveryConfig`](crate::config::DeliveryConfig)
//! carries one and reads it from `HERALD_MAX_RETRY_ATTEMPTS`,
//! `HERALD_RETRY_BACKOFF_BASE` and `HERALD_RETRY_MAX_DELAY`; the handler
//! runtime and the publish guard apply it (see
//! [`HandlerBuilder::retry`](crate::HandlerBuilder::retry)).

use std::time::Duration;

use crate::config::in_range;
use crate::model::error::Result;

/// Retries after the first attempt (`HERALD_MAX_RETRY_ATTEMPTS`).
pub const DEFAULT_MAX_RETRY_ATTEMPTS: u32 = 3;
/// The first retry's nominal delay (`HERALD_RETRY_BACKOFF_BASE`).
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest delay (`HERALD_RETRY_MAX_DELAY`).
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);

/// When and how often to retry a failed message.
///
/// ```
/// use std::time::Duration;
/// use herald::retry::RetryPolicy;
/// let policy = RetryPolicy::default().base(Duration::from_millis(100)).max_attempts(5);
/// policy.validate().unwrap();
/// // retry 3 (0-based): 100 ms × 2³ × jitter ∈ [400 ms, 1200 ms]
/// let d = policy.delay(3);
/// assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(1200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    base: Duration,
    max_delay: Duration,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: DEFAULT_RETRY_BACKOFF_BASE,
            max_delay: DEFAULT_RETRY_MAX_DELAY,
            max_attempts: DEFAULT_MAX_RETRY_ATTEMPTS,
            max_elapsed: None,
        }
    }
}

impl RetryPolicy {
    /// Check every value against its allowed range (DESIGN.md §9, with a
    /// base down to 1 ms for tests).
    pub fn validate(&self) -> Result<()> {
        in_range("HERALD_MAX_RETRY_ATTEMPTS", self.max_attempts, 0, 10)?;
        in_range(
            "HERALD_RETRY_BACKOFF_BASE",
            self.base.as_secs_f64(),
            0.001,
            60.0,
        )?;
        in_range(
            "HERALD_RETRY_MAX_DELAY",
            self.max_delay.as_secs_f64(),
            self.base.as_secs_f64(),
            3600.0,
        )?;
        Ok(())
    }

    /// The first retry's nominal delay.
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }
    /// The longest delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Retries after the first attempt, 0–10.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Give up once this much time has passed since the message was created.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// The delay before retry `n` (0-based), with a fresh random jitter.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, 0.5 + fastrand::f64())
    }

    /// The delay before retry `n` (0-based) with the given `jitter`
    /// (clamped to [0.5, 1.5]).
    pub fn delay_with(&self, n: u32, jitter: f64) -> Duration {
        let factor = 2f64.powi(n.min(62) as i32) * jitter.clamp(0.5, 1.5);
        let nominal = self.base.as_secs_f64() * factor;
        Duration::try_from_secs_f64(nominal)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Whether a message whose `attempt` (1-based) just failed may be tried
    /// again, `elapsed` after it was created.
    pub fn allows(&self, attempt: u32, elapsed: Duration) -> bool {
        attempt <= self.max_attempts && self.max_elapsed.is_none_or(|m| elapsed < m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_jitter_band_and_are_capped() {
        let p = RetryPolicy::default()
            .base(Duration::from_millis(100))
            .max_delay(Duration::from_secs(2));
        for (n, nominal_ms) in [(0u32, 100u64), (1, 200), (2, 400), (3, 800)] {
            assert_eq!(p.delay_with(n, 0.5), Duration::from_millis(nominal_ms / 2));
            assert_eq!(
                p.delay_with(n, 1.5),
                Duration::from_millis(nominal_ms * 3 / 2)
            );
            assert_eq!(p.delay_with(n, 1.0), Duration::from_millis(nominal_ms));
        }
        assert_eq!(p.delay_with(5, 1.0), Duration::from_secs(2), "capped");
        assert_eq!(
            p.delay_with(1000, 1.5),
            Duration::from_secs(2),
            "no overflow"
        );
        assert_eq!(
            p.delay_with(0, 9.0),
            Duration::from_millis(150),
            "jitter clamped"
        );
        for n in 0..4 {
            for _ in 0..1000 {
                let d = p.delay(n);
                let lo = p.delay_with(n, 0.5);
                let hi = p.delay_with(n, 1.5);
                assert!(
                    d >= lo && d <= hi,
                    "retry {n}: {d:?} outside {lo:?}..={hi:?}"
                );
            }
        }
    }

    #[test]
    fn attempts_and_elapsed_time_bound_retries() {
        let p = RetryPolicy::default()
            .max_attempts(2)
            .max_elapsed(Duration::from_secs(10));
        assert!(p.allows(1, Duration::ZERO));
        assert!(p.allows(2, Duration::ZERO));
        assert!(!p.allows(3, Duration::ZERO));
        assert!(!p.allows(1, Duration::from_secs(10)));
        assert!(!RetryPolicy::default()
            .max_attempts(0)
            .allows(1, Duration::ZERO));
    }

    #[test]
    fn settings_are_range_checked_by_name() {
        for (p, key) in [
            (
                RetryPolicy::default().max_attempts(11),
                "HERALD_MAX_RETRY_ATTEMPTS",
            ),
            (
                RetryPolicy::default().base(Duration::ZERO),
                "HERALD_RETRY_BACKOFF_BASE",
            ),
            (
                RetryPolicy::default()
                    .base(Duration::from_secs(2))
                    .max_delay(Duration::from_secs(1)),
                "HERALD_RETRY_MAX_DELAY",
            ),
        ] {
            let err = p.validate().unwrap_err();
            assert!(err.message().contains(key), "{}", err.message());
        }
    }
}

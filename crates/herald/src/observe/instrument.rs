//! herald's own metrics, on by default: what a bus records about itself in
//! its [`Metrics`] registry ([`Bus::metrics`](crate::Bus::metrics)), and the
//! default SLOs over them (DESIGN.md §7–8).
//!
//! Owns the metric names (the constants below), `Instruments` (the
//! handles the bus, subscriptions and handler runtime record into, made once
//! so the hot paths never look a name up) and [`default_slos`]. Does not
//! own the registry, the SLO loop or the exposition format.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | [`PUBLISH_SECONDS`] | sampled | `Bus::publish`, validation to `Ok` |
//! | [`DISPATCH_SECONDS`] | sampled | `Bus::call`, start to response |
//! | [`FANOUT_SECONDS`] | sampled | publish to a subscriber receiving it, in-process (not for events read back from a store) |
//! | [`END_TO_END_SECONDS`] | sampled | publish to a handler settling it (in-process clock when the event never left the process, else the envelope's `time`) |
//! | [`HANDLER_SECONDS`] | sampled | one handler call, with settling |
//! | [`HANDLER_CALLS`] | counter, `outcome` | handler calls by outcome: `acked`, `retried`, `dead_lettered`, `deferred` |
//! | [`DEAD_LETTERS`] | counter | events this process's handlers dead-lettered |
//! | [`PUBLISH_ERRORS`] | counter, `code` | `Bus::publish` calls that failed, by error code (`UNAVAILABLE`, `TIMEOUT`, `VALIDATION`, …) |
//! | [`SLO_VIOLATIONS`](crate::observe::slo::SLO_VIOLATIONS) | counter, `metric` | SLO violations the bus's monitor reported |
//! | [`CONSUMER_STALLED`](crate::observe::health::CONSUMER_STALLED) and its neighbours | gauge, `group` | consumer health (`observe::health`) |
//! | [`CONSUMER_LAG`] | gauge, `group`, `topic` | a handler group's distance behind a topic's last `seq`, refreshed at most once a second while it handles |
//! | [`START_SKIPPED`] | counter, `topic` | events a subscription's start asked for that the memory store no longer kept (it keeps the last `history_size` of a topic) |
//! | [`DEAD_LETTERS_DISCARDED`] | counter, `source` | dead letters a store kept nothing of, with `HERALD_DEAD_LETTERS=off` (counted in the registry of each bus on the store) |
//! | [`BREAKER_STATE`] | gauge, `breaker` | 0 closed, 1 half-open, 2 open: the publish breaker, and any breaker [exported](crate::runtime::breaker::CircuitBreaker::export) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::model::envelope::Envelope;
use crate::observe::metrics::{Counter, Metric, Metrics, Percentile};
use crate::observe::outcome::HandlerOutcome;
use crate::observe::slo::Slo;

/// `Bus::publish`, seconds.
pub const PUBLISH_SECONDS: &str = "herald_publish_seconds";
/// `Bus::call`, seconds.
pub const DISPATCH_SECONDS: &str = "herald_command_dispatch_seconds";
/// Publish to a subscriber receiving the event, in-process, seconds.
pub const FANOUT_SECONDS: &str = "herald_fanout_seconds";
/// Publish to a handler settling the event, seconds.
pub const END_TO_END_SECONDS: &str = "herald_end_to_end_seconds";
/// One handler call, seconds.
pub const HANDLER_SECONDS: &str = "herald_handler_seconds";
/// Handler calls by `outcome`.
pub const HANDLER_CALLS: &str = "herald_handler_calls_total";
/// Events dead-lettered by this process's handlers.
pub const DEAD_LETTERS: &str = "herald_dead_letters_total";
/// `Bus::publish` calls that failed, by `code`.
pub const PUBLISH_ERRORS: &str = "herald_publish_errors_total";
/// A group's events behind a topic's last `seq`, by `group` and `topic`.
pub const CONSUMER_LAG: &str = "herald_consumer_lag";
/// Events a start at `Earliest` or a `seq` asked for that the memory store
/// no longer kept, by `topic`.
pub const START_SKIPPED: &str = "herald_start_skipped_total";
/// Dead letters a store discarded (`HERALD_DEAD_LETTERS=off`), by `source`.
pub const DEAD_LETTERS_DISCARDED: &str = "herald_dead_letters_discarded_total";
/// A circuit breaker's state by `breaker`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "herald_circuit_breaker_state";

/// How often a handler group's lag is refreshed at most, per topic.
pub const LAG_REFRESH: Duration = Duration::from_secs(1);

/// The SLOs of DESIGN.md §8's required bounds: command dispatch p95 under
/// 1 ms and fan-out p95 under 5 ms (each judged from 100 samples on).
///
/// ```
/// let slos = herald::instrument::default_slos();
/// assert_eq!(slos[0].metric(), herald::instrument::DISPATCH_SECONDS);
/// assert_eq!(slos[0].threshold(), 0.001);
/// ```
pub fn default_slos() -> Vec<Slo> {
    vec![
        Slo::new(DISPATCH_SECONDS, Percentile::P95, 0.001).min_samples(100),
        Slo::new(FANOUT_SECONDS, Percentile::P95, 0.005).min_samples(100),
        Slo::gauge(crate::observe::health::CONSUMER_STALLED, 0.0),
    ]
}

/// The handles a bus records into.
pub(crate) struct Instruments {
    pub(crate) metrics: Metrics,
    pub(crate) publish: Metric,
    pub(crate) dispatch: Metric,
    pub(crate) fanout: Metric,
    end_to_end: Metric,
    handler: Metric,
    /// By [`HandlerOutcome`]: acked, retried, dead-lettered, deferred.
    calls: [Counter; 4],
    dead_letters: Counter,
}

impl Instruments {
    pub(crate) fn new(metrics: Metrics) -> Arc<Instruments> {
        let calls = ["acked", "retried", "dead_lettered", "deferred"]
            .map(|outcome| metrics.counter(HANDLER_CALLS, &[("outcome", outcome)]));
        Arc::new(Instruments {
            publish: metrics.register(PUBLISH_SECONDS),
            dispatch: metrics.register(DISPATCH_SECONDS),
            fanout: metrics.register(FANOUT_SECONDS),
            end_to_end: metrics.register(END_TO_END_SECONDS),
            handler: metrics.register(HANDLER_SECONDS),
            dead_letters: metrics.counter(DEAD_LETTERS, &[]),
            calls,
            metrics,
        })
    }

    /// A publish failed with `code`.
    pub(crate) fn publish_failed(&self, code: crate::model::error::ErrorCode) {
        self.metrics
            .counter(PUBLISH_ERRORS, &[("code", code.as_str())])
            .inc();
    }

    /// A subscriber received `env`.
    #[inline]
    pub(crate) fn received(&self, env: &Envelope) {
        if let Some(at) = env.published_at.get() {
            self.fanout.record(at.elapsed().as_secs_f64());
        }
    }

    /// A handler call on `env` that took `took` ended in `outcome`.
    pub(crate) fn handled(&self, env: &Envelope, took: Duration, outcome: HandlerOutcome) {
        self.handler.record(took.as_secs_f64());
        let i = match outcome {
            HandlerOutcome::Acked => 0,
            HandlerOutcome::Retried => 1,
            HandlerOutcome::DeadLettered => 2,
            HandlerOutcome::Deferred => 3,
        };
        self.calls[i].inc();
        if outcome == HandlerOutcome::DeadLettered {
            self.dead_letters.inc();
        }
        if outcome == HandlerOutcome::Acked {
            let since = match env.published_at.get() {
                Some(at) => at.elapsed().as_secs_f64(),
                None => {
                    let ms = (chrono::Utc::now() - env.timestamp()).num_microseconds();
                    ms.unwrap_or(0).max(0) as f64 / 1e6
                }
            };
            self.end_to_end.record(since);
        }
    }
}

/// When each (group, topic) lag was last refreshed, so a busy handler
/// asks the transport at most once per [`LAG_REFRESH`].
#[derive(Default)]
pub(crate) struct LagProbe {
    last: Mutex<std::collections::HashMap<crate::model::topic::Topic, Instant>>,
}

impl LagProbe {
    /// Whether `topic`'s lag is due for a refresh (marking it refreshed).
    pub(crate) fn due(&self, topic: &crate::model::topic::Topic) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        match last.get(topic) {
            Some(at) if now.duration_since(*at) < LAG_REFRESH => false,
            _ => {
                last.insert(topic.clone(), now);
                true
            }
        }
    }
}

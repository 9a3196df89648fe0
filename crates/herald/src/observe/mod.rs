//! Watching the bus: the [`metrics`] registry, herald's own [`instrument`]s,
//! [`slo`] checks, W3C [`trace`] context at publish, and the Prometheus
//! encoding.
//!
//! Imports `model` and `config` only. It never publishes by itself: an SLO
//! violation leaves through a [`slo::ViolationSink`] that the bus provides,
//! and handler outcomes arrive as [`outcome::HandlerOutcome`]s.

pub mod health;
pub mod instrument;
pub mod metrics;
pub mod outcome;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod slo;
pub mod trace;

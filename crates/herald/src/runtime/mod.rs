//! The layers around a handler call (DESIGN.md §6): the [`Layer`](middleware::Layer)
//! trait and timeout ([`middleware`]), the circuit [`breaker`],
//! [`rate_limit`]s and consumer-side [`dedupe`]. The retry policy they apply
//! is configuration ([`RetryPolicy`](crate::config::RetryPolicy)).
//!
//! Each layer wraps one call and knows nothing of subscriptions or stores:
//! the driver that feeds calls through them is the bus's
//! [`handler`](crate::bus::handler). Imports `model`, `config`, `observe`
//! and `memory` (for the in-memory dedupe store's defaults).

pub mod breaker;
pub mod dedupe;
pub mod middleware;
pub(crate) mod panic;
pub mod rate_limit;

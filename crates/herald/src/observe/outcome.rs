//! How a handler call ended, and the hook that hears it.
//!
//! Owns [`HandlerOutcome`] and [`HandlerObserver`]: the handler runtime
//! (`bus::handler`) reports every call here; the metrics of
//! [`instrument`](crate::observe::instrument) are one observer. Nothing here
//! runs a handler.

use std::sync::Arc;
use std::time::Duration;

use crate::model::envelope::Envelope;

/// How one handler call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Handled; the message is acked.
    Acked,
    /// Failed retryably (or panicked, or timed out); it will be redelivered.
    Retried,
    /// Failed terminally or ran out of retries; it is dead-lettered.
    DeadLettered,
    /// Not run now (an open circuit breaker, an [`Error::defer`](crate::Error::defer)); it will
    /// be redelivered without counting an attempt.
    Deferred,
}

/// Sees every handler call: what, how long, how it ended. The hook the
/// metrics layer plugs into.
pub trait HandlerObserver: Send + Sync + 'static {
    /// `envelope` was handled in `elapsed` with `outcome`.
    fn handled(&self, envelope: &Envelope, elapsed: Duration, outcome: HandlerOutcome);
}

/// A shared observer (keep a handle to read what it gathered).
impl<T: HandlerObserver> HandlerObserver for Arc<T> {
    fn handled(&self, envelope: &Envelope, elapsed: Duration, outcome: HandlerOutcome) {
        T::handled(self, envelope, elapsed, outcome)
    }
}

//! W3C Trace Context across the bus: every published envelope carries a
//! `traceparent` header, and handling an event continues its trace, so one
//! trace spans producer → consumer across processes and transports.
//!
//! Owns `inject`: the rule for what an envelope being published carries
//! ([`TraceParent`] itself, the value, is the model's). A `traceparent` the
//! message already has is kept (a service propagating its own OpenTelemetry
//! context wins); otherwise, inside a handler ([`Context`]) the envelope
//! continues the handled event's trace as a child, and elsewhere it starts a
//! trace. There must be room for the header within the envelope's header
//! limits, else nothing is added (publishing never fails for tracing).
//!
//! The `tracing` spans that carry the ids (`herald.publish`,
//! `herald.handle`, `herald.settle`) are opened by the bus and the handler
//! runtime; this module does not open spans or export anything. A
//! [`Propagator`] (`herald-otel` has the OpenTelemetry one) lets a tracing
//! system give the parent at publish and adopt `herald.handle` spans into
//! the handled event's trace.
//!
//! ```
//! use herald::trace::TraceParent;
//! let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
//! assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! let child = tp.child();
//! assert_eq!(child.trace_id(), tp.trace_id());
//! assert_ne!(child.span_id(), tp.span_id());
//! assert_eq!(child.to_string().len(), 55);
//! ```

use crate::model::context::Context;
use crate::model::envelope::{Envelope, Limits};
pub use crate::model::traceparent::{TraceParent, TRACEPARENT};

/// Where herald meets a tracing system such as OpenTelemetry
/// (`herald-otel` implements it): the trace context of the code that
/// publishes, and making a handler's span continue the handled event's
/// trace. Without one, herald continues traces through its own
/// [`Context`] only.
pub trait Propagator: Send + Sync + 'static {
    /// The trace context of the caller (its current span), if it has one.
    fn current(&self) -> Option<TraceParent>;

    /// Make `span` (a handler's `herald.handle`) a child of `parent`.
    fn continue_span(&self, span: &tracing::Span, parent: TraceParent);
}

/// The process's default, as `tracing`'s subscriber is: a bus built with
/// its own ([`BusBuilder::propagator`](crate::BusBuilder::propagator)) uses
/// that one instead.
static PROPAGATOR: std::sync::OnceLock<Box<dyn Propagator>> = std::sync::OnceLock::new();

/// Use `propagator` for every bus in this process that has none of its
/// own; `false` (and nothing changes) when one is already set.
pub fn set_propagator(propagator: impl Propagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// The process's default propagator, if one is set.
pub(crate) fn process_propagator() -> Option<&'static dyn Propagator> {
    PROPAGATOR.get().map(|p| &**p)
}

/// Give `envelope` a `traceparent` unless it has one: the caller's span
/// through `propagator` when there is one, else a child of the handled
/// event's trace inside a handler, else a new trace; only when it fits
/// `limits`.
pub(crate) fn inject(
    envelope: &mut Envelope,
    limits: &Limits,
    propagator: Option<&dyn Propagator>,
) {
    if envelope.headers.contains_key(TRACEPARENT) {
        return;
    }
    // The caller's own span (through a propagator) is the parent when there
    // is one; it already continues the handled event's trace.
    let tp = propagator
        .and_then(|p| p.current())
        .or_else(|| {
            Context::current()
                .and_then(|c| c.trace())
                .map(|t| t.child())
        })
        .unwrap_or_else(TraceParent::root);
    let value = tp.header_value();
    if limits.has_room_for(&envelope.headers, TRACEPARENT, &value) {
        envelope.headers.insert(TRACEPARENT.to_owned(), value);
    }
}

//! OpenTelemetry for herald: with [`install`], an event published inside a
//! span carries that span's context as its W3C `traceparent`, and each
//! handler's `herald.handle` span becomes a child of the handled event's
//! producer span, so one OpenTelemetry trace runs from producer to consumer
//! across processes and transports.
//!
//! Owns [`OtelPropagator`], herald's
//! [`Propagator`](herald::trace::Propagator) over `tracing-opentelemetry`'s
//! span contexts. Does not own the `tracing` subscriber, the tracer or the
//! exporter (set up `tracing_opentelemetry::layer().with_tracer(…)` and an
//! exporter as for any service, or use [`otlp`] with the `otlp` feature):
//! without that layer in the
//! subscriber, spans have no OpenTelemetry context and herald falls back to
//! continuing traces by its own correlation context.
//!
//! ```no_run
//! // once, at start-up, beside the tracing-opentelemetry layer:
//! herald_otel::install();
//! // or for one bus only:
//! let bus = herald::Bus::builder().propagator(herald_otel::OtelPropagator).build();
//! ```

#[cfg(feature = "otlp")]
pub mod otlp;

use herald::trace::{Propagator, TraceParent};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Use [`OtelPropagator`] for every bus of this process that has no
/// propagator of its own; `false` when a process propagator was already set.
pub fn install() -> bool {
    herald::trace::set_propagator(OtelPropagator)
}

/// Reads and sets `tracing` spans' OpenTelemetry contexts.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelPropagator;

impl Propagator for OtelPropagator {
    fn current(&self) -> Option<TraceParent> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        TraceParent::new(
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            u64::from_be_bytes(sc.span_id().to_bytes()),
            sc.is_sampled(),
        )
    }

    fn continue_span(&self, span: &tracing::Span, parent: TraceParent) {
        let flags = if parent.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id().to_be_bytes()),
            SpanId::from_bytes(parent.span_id().to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only when the span is disabled or already started: nothing
        // to adopt then.
        let _ = span.set_parent(cx);
    }
}

//! W3C Trace Context across the bus: every published envelope carries a
//! `traceparent` header, and handling an event continues its trace, so one
//! trace spans producer → consumer across processes and transports.
//!
//! Owns [`TraceParent`] (parse, format, child and root) and [`inject`]: the
//! rule for what an envelope being published carries. A `traceparent` the
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

use std::fmt;
use std::str::FromStr;

use crate::context::Context;
use crate::envelope::{Envelope, Limits};
use crate::error::Error;

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// A W3C `traceparent`: version 00, a 128-bit trace id, the 64-bit id of
/// the parent span, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

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

static PROPAGATOR: std::sync::OnceLock<Box<dyn Propagator>> = std::sync::OnceLock::new();

/// Use `propagator` for this process; `false` (and nothing changes) when
/// one is already set.
pub fn set_propagator(propagator: impl Propagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// The process's propagator, if one is set.
pub(crate) fn propagator() -> Option<&'static dyn Propagator> {
    PROPAGATOR.get().map(|p| &**p)
}

impl TraceParent {
    /// A trace context from its parts (ids must not be zero: `None` then).
    pub fn new(trace_id: u128, span_id: u64, sampled: bool) -> Option<TraceParent> {
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            flags: u8::from(sampled),
        })
    }

    /// A new trace (random ids), sampled.
    pub fn root() -> TraceParent {
        TraceParent {
            trace_id: nonzero(|| fastrand::u128(..)),
            span_id: nonzero(|| fastrand::u64(..)),
            flags: 1,
        }
    }

    /// The next hop of this trace: same trace id and flags, a new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: nonzero(|| fastrand::u64(..)),
            ..*self
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent span's id.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` of `envelope`, if it has a valid one.
    pub fn of(envelope: &Envelope) -> Option<TraceParent> {
        envelope.header(TRACEPARENT)?.parse().ok()
    }
}

fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
}

impl TraceParent {
    /// The header value, `00-<trace id>-<span id>-<flags>`: written by hand,
    /// as it is on every publish (`format!` costs several times more).
    pub fn header_value(&self) -> String {
        let mut out = Vec::with_capacity(55);
        out.extend_from_slice(b"00-");
        push_hex(&mut out, &self.trace_id.to_be_bytes());
        out.push(b'-');
        push_hex(&mut out, &self.span_id.to_be_bytes());
        out.push(b'-');
        push_hex(&mut out, &[self.flags]);
        // Only ASCII hex digits and dashes were written.
        String::from_utf8(out).unwrap_or_default()
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value())
    }
}

impl FromStr for TraceParent {
    type Err = Error;

    /// Version 00 (or a later version's first four fields, as the
    /// specification asks); all-zero ids and upper-case hex are invalid.
    fn from_str(s: &str) -> Result<TraceParent, Error> {
        let bad = || Error::validation(format!("{s:?} is not a W3C traceparent"));
        let mut parts = s.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return Err(bad());
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return Err(bad());
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| bad())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| bad())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| bad())?;
        if trace_id == 0 || span_id == 0 {
            return Err(bad());
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// Give `envelope` a `traceparent` unless it has one: a child of the
/// handled event's trace inside a handler, a new trace elsewhere; only when
/// it fits `limits`.
pub(crate) fn inject(envelope: &mut Envelope, limits: &Limits) {
    if envelope.headers.contains_key(TRACEPARENT) {
        return;
    }
    // The caller's own span (through a propagator) is the parent when there
    // is one; it already continues the handled event's trace.
    let tp = propagator()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_specification_allows_and_nothing_else() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = ok.parse().unwrap();
        assert_eq!(tp.to_string(), ok);
        assert_eq!(
            tp.header_value(),
            format!("00-{:032x}-{:016x}-01", tp.trace_id(), tp.span_id())
        );
        assert!(tp.sampled());
        assert!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"
                .parse::<TraceParent>()
                .is_ok()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roots_are_sampled_and_distinct() {
        let (a, b) = (TraceParent::root(), TraceParent::root());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.sampled());
        assert_eq!(a.to_string().parse::<TraceParent>().unwrap(), a);
    }
}

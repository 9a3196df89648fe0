//! The W3C `traceparent` value an envelope carries in its headers.
//!
//! Owns [`TraceParent`]: parse, format, child and root. Which envelopes get
//! one, and the `tracing` spans around it, are
//! [`observe::trace`](crate::observe::trace)'s.

use std::fmt;
use std::str::FromStr;

use crate::model::envelope::Envelope;
use crate::model::error::Error;

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

//! The one error type of herald and its stable codes.
//!
//! Owns [`Error`], [`ErrorCode`] and the [`Result`] alias. Every fallible herald
//! API returns this type; backends map their native failures into it and keep
//! the native error as the [`std::error::Error::source`], so callers match on
//! [`Error::code`] and never downcast.
//!
//! Codes are part of the wire format (DESIGN.md §5): they are append-only and a
//! retired code is never reused. This module does not decide *when* an error is
//! raised; each module that validates or fails does that.

use std::fmt;
use std::time::Duration;

use uuid::Uuid;

/// A `Result` whose error is herald's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable classification of an [`Error`], the same in Rust, on the wire and in
/// the CLI.
///
/// ```
/// use herald::ErrorCode;
/// assert_eq!(ErrorCode::Backpressure.as_str(), "BACKPRESSURE");
/// assert_eq!("TIMEOUT".parse::<ErrorCode>().unwrap(), ErrorCode::Timeout);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The input broke a rule (bad topic, bad envelope, bad config value).
    Validation,
    /// The bus refused work it cannot take now (payload too large, buffer full).
    Backpressure,
    /// Nothing is there to serve the request (no command handler, unknown entry).
    NotFound,
    /// The operation did not finish within its deadline.
    Timeout,
    /// A transport or dependency cannot be reached, or the bus is closed.
    Unavailable,
    /// A registration or entry that must be unique already exists.
    Duplicate,
    /// The caller is not authenticated.
    Unauthorized,
    /// The caller is authenticated but not allowed.
    Forbidden,
    /// A bug or an invariant broken inside herald or a handler (including panics).
    Internal,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Validation,
        ErrorCode::Backpressure,
        ErrorCode::NotFound,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Duplicate,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];

    /// The wire spelling (`"VALIDATION"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "VALIDATION",
            ErrorCode::Backpressure => "BACKPRESSURE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Duplicate => "DUPLICATE",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Whether trying the same operation again later may succeed.
    ///
    /// `BACKPRESSURE`, `TIMEOUT` and `UNAVAILABLE` are transient; the rest are
    /// terminal: retrying the same input gives the same answer.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Backpressure | ErrorCode::Timeout | ErrorCode::Unavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::validation(format!("unknown error code {s:?}")))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// herald's error: a stable [`ErrorCode`], a message, an optional source and the
/// correlation id of the message being handled when it is known.
///
/// ```
/// use herald::{Error, ErrorCode};
/// let err = Error::new(ErrorCode::NotFound, "no handler for `user.create`");
/// assert_eq!(err.code(), ErrorCode::NotFound);
/// assert!(!err.retryable());
/// assert_eq!(err.to_string(), "NOT_FOUND: no handler for `user.create`");
/// ```
#[derive(thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    code: ErrorCode,
    message: String,
    retryable: Option<bool>,
    defer: Option<Duration>,
    correlation_id: Option<Uuid>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// `UNAVAILABLE`: `what` was asked of a bus that is closed.
    pub(crate) fn closed(what: &str) -> Error {
        Error::new(ErrorCode::Unavailable, format!("{what}: the bus is closed"))
    }

    /// An error with `code` and a human-readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retryable: None,
            defer: None,
            correlation_id: None,
            source: None,
        }
    }

    /// Shorthand for a [`ErrorCode::Validation`] error.
    pub fn validation(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Validation, message)
    }

    /// Shorthand for a [`ErrorCode::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    /// A handler's verdict that this failure will never succeed on retry:
    /// the message is dead-lettered at once (DESIGN.md §4.6).
    pub fn terminal(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::new(code, message).with_retryable(false)
    }

    /// Not a failure but "not now": the handler runtime hands the message
    /// back to be redelivered after `delay` without counting an attempt or
    /// a failure (an open circuit breaker says this). Code `UNAVAILABLE`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = herald::Error::defer(Duration::from_secs(5), "downstream is paused");
    /// assert_eq!(err.deferred(), Some(Duration::from_secs(5)));
    /// assert!(err.retryable());
    /// ```
    pub fn defer(delay: Duration, message: impl Into<String>) -> Self {
        let mut e = Error::new(ErrorCode::Unavailable, message);
        e.defer = Some(delay);
        e
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Override the code's default [`retryable`](Error::retryable) verdict.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Attach the correlation id of the message that was being handled.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without the code prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying may succeed: the code's verdict unless overridden.
    pub fn retryable(&self) -> bool {
        self.retryable.unwrap_or(self.code.retryable())
    }

    /// For an [`Error::defer`]: how long to wait before redelivery.
    pub fn deferred(&self) -> Option<Duration> {
        self.defer
    }

    /// The correlation id of the message being handled, when known.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("code", &self.code).field("message", &self.message);
        if let Some(r) = self.retryable {
            d.field("retryable", &r);
        }
        if let Some(t) = self.defer {
            d.field("defer", &t);
        }
        if let Some(c) = self.correlation_id {
            d.field("correlation_id", &c);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::validation(format!("invalid JSON: {e}")).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_spelling() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
        }
        assert_eq!(
            "nope".parse::<ErrorCode>().unwrap_err().code(),
            ErrorCode::Validation
        );
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        let retryable: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::Backpressure,
                ErrorCode::Timeout,
                ErrorCode::Unavailable
            ]
        );
    }

    #[test]
    fn terminal_overrides_the_code_verdict_and_source_is_kept() {
        let io = std::io::Error::other("disk gone");
        let err = Error::terminal(ErrorCode::Unavailable, "store down").with_source(io);
        assert!(!err.retryable());
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "disk gone"
        );
    }
}

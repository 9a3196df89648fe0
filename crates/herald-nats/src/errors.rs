//! How NATS failures become herald errors.
//!
//! Owns the mapping from async-nats error kinds to herald's codes: a timeout
//! is `TIMEOUT`, a lost or refused connection `UNAVAILABLE` (both
//! retryable), a request the server rejects `INTERNAL` with the server's
//! description. Callers add what they were doing. A leaf: it imports
//! nothing of the crate.

use herald::{Error, ErrorCode};

/// `err`, which happened while `doing`, as a herald error of `code`.
pub(crate) fn nats(code: ErrorCode, doing: &str, err: impl std::fmt::Display) -> Error {
    Error::new(code, format!("NATS: {doing}: {err}"))
}

/// A JetStream request that failed while `doing`.
pub(crate) fn request(doing: &str, err: async_nats::jetstream::context::RequestError) -> Error {
    use async_nats::jetstream::context::RequestErrorKind as K;
    let code = match err.kind() {
        K::TimedOut => ErrorCode::Timeout,
        K::NoResponders => ErrorCode::Unavailable,
        K::Other => ErrorCode::Unavailable,
    };
    nats(code, doing, err)
}

/// A publish that failed.
pub(crate) fn publish(topic: &str, err: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let code = match err.kind() {
        K::TimedOut => ErrorCode::Timeout,
        K::MaxAckPending => ErrorCode::Backpressure,
        K::StreamNotFound | K::BrokenPipe | K::Other => ErrorCode::Unavailable,
        K::WrongLastMessageId | K::WrongLastSequence => ErrorCode::Internal,
    };
    nats(code, &format!("publish to `{topic}`"), err)
}

/// An error the JetStream API answered with, while `doing`.
pub(crate) fn api(doing: &str, err: &async_nats::jetstream::Error) -> Error {
    let code = match err.code() {
        404 => ErrorCode::NotFound,
        503 => ErrorCode::Unavailable,
        400 => ErrorCode::Validation,
        _ => ErrorCode::Internal,
    };
    nats(code, doing, err)
}

/// The store was closed.
pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the NATS store is closed")
}

/// Whether getting a stream failed because there is none.
pub(crate) fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream;
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

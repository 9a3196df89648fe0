//! How Kafka failures become herald errors.
//!
//! Owns the mapping from librdkafka's error codes to herald's: a message
//! over the broker's or producer's size limit is `BACKPRESSURE`, a full
//! local producer queue `BACKPRESSURE`, a timed-out send `TIMEOUT`, brokers
//! out of reach `UNAVAILABLE` (the retryable ones), an invalid topic or
//! setting `VALIDATION`. Callers add what they were doing.

use herald::{Error, ErrorCode};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// `err`, which happened while `doing`, as a herald error.
pub(crate) fn kafka(doing: &str, err: &KafkaError) -> Error {
    Error::new(code_of(err), format!("Kafka: {doing}: {err}"))
}

/// An admin operation's failure on one topic, as a herald error.
pub(crate) fn admin(doing: &str, topic: &str, code: RDKafkaErrorCode) -> Error {
    Error::new(code_for(code), format!("Kafka: {doing} `{topic}`: {code}"))
}

/// The herald code of a Kafka failure.
pub(crate) fn code_of(err: &KafkaError) -> ErrorCode {
    match err.rdkafka_error_code() {
        Some(code) => code_for(code),
        None => match err {
            KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => ErrorCode::Validation,
            _ => ErrorCode::Unavailable,
        },
    }
}

fn code_for(code: RDKafkaErrorCode) -> ErrorCode {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidRecord => ErrorCode::Backpressure,
        C::QueueFull => ErrorCode::Backpressure,
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut => ErrorCode::Timeout,
        C::InvalidTopic | C::InvalidArgument | C::InvalidConfig => ErrorCode::Validation,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => ErrorCode::NotFound,
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed => ErrorCode::Forbidden,
        C::SaslAuthenticationFailed | C::Authentication => ErrorCode::Unauthorized,
        _ => ErrorCode::Unavailable,
    }
}

/// The store was closed.
pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the Kafka store is closed")
}

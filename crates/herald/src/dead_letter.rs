//! Dead letters: messages that will not be delivered, with why.
//!
//! Owns [`DeadLetter`] and [`FailureSource`], the one record every failure
//! source writes (DESIGN.md §4.12). Storing, listing and replaying them is each
//! transport's business.

use chrono::{DateTime, Utc};

use crate::envelope::Envelope;
use crate::error::ErrorCode;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureSource {
    /// A handler failed (retries exhausted or a terminal error).
    Handler,
    /// The message passed its `expires_at` before delivery.
    Expired,
    /// The payload could not be decoded for the subscriber.
    Decode,
    /// The outbox forwarder could not deliver it.
    Forwarder,
    /// The HTTP/WebSocket gateway could not accept it.
    Gateway,
}

/// One dead-lettered message and its failure metadata.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The original envelope (topic, seq, correlation id, attempt).
    pub envelope: Envelope,
    /// The consumer group that gave up, if any.
    pub group: Option<String>,
    /// Why.
    pub reason: String,
    /// The failure's code.
    pub code: ErrorCode,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Where the failure came from.
    pub source: FailureSource,
}

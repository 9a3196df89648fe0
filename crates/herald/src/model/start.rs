//! Where a subscription, or a durable group when it is made, starts reading.
//!
//! Owns [`StartPosition`] and the rule of what a start admits; where reading
//! begins in a store is the store's business.

use chrono::{DateTime, Utc};

use crate::model::envelope::Envelope;

/// Where a new subscription (or a new durable group) starts reading. A
/// durable group's start is fixed when the group is made, and kept across
/// closes and restarts (DESIGN.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// From the oldest event the transport retains.
    Earliest,
    /// Only events published after the subscription opens (the default);
    /// for a durable group, every event published after the group was made,
    /// those published while it had no member too.
    #[default]
    Latest,
    /// From this `seq` in each matching topic.
    Seq(u64),
    /// From the first event created at or after this time, compared at the
    /// millisecond precision of UUID v7 ids.
    Time(DateTime<Utc>),
}

impl StartPosition {
    /// Whether a subscription starting here delivers `envelope` (`Latest`
    /// and `Earliest` admit everything they read; where reading begins is
    /// the transport's business).
    pub fn admits(&self, envelope: &Envelope) -> bool {
        match self {
            StartPosition::Seq(n) => envelope.seq().is_some_and(|s| s >= *n),
            StartPosition::Time(t) => {
                envelope.timestamp().timestamp_millis() >= t.timestamp_millis()
            }
            StartPosition::Earliest | StartPosition::Latest => true,
        }
    }
}

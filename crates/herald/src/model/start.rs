//! Where a subscription, or a durable group when it is made, starts reading.
//!
//! Owns [`StartPosition`] and the rule of what a start admits; where reading
//! begins in a store is the store's business.

use chrono::{DateTime, Utc};

use crate::model::envelope::Envelope;

/// Where a subscription starts reading. A group-less subscription starts
/// here each time it opens. A group starts here once, when it is made: an
/// existing group resumes where it left off, whatever start a member opening
/// it asks for, across closes and, on a durable store, restarts (DESIGN.md
/// §4.5). Every builder's `start` (of a subscription, a handler, a
/// forwarder) means this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// From the oldest event the store keeps: all of them on SQLite and
    /// PostgreSQL until retention deletes them, within the stream's or
    /// topic's retention on NATS and Kafka, and only the last
    /// [`history_size`](crate::memory::MemoryConfig::history_size) (default
    /// 1,000) on the memory store, which logs a warning and counts the
    /// older events it skipped.
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

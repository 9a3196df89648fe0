//! What this process's Kafka consumer groups tell their watchers: which
//! partitions they took or gave up ([`Rebalanced`], through
//! [`KafkaStore::on_rebalance`](crate::KafkaStore::on_rebalance)), and how
//! far each partition they hold lags behind its end (the gauge
//! [`CONSUMER_LAG`] in the registry of the bus running on the store).
//!
//! Does not own the rebalance itself (what is committed, withdrawn or
//! waited for): that is [`group`](crate::group)'s.

use std::sync::Arc;

/// Gauge: a partition's events past the group's committed offset (its first
/// unsettled one), labelled `group`, `topic` (herald's) and `partition`;
/// refreshed about once a second by the process that holds the partition.
/// A partition given up reads 0 here; its new owner reports it.
pub const CONSUMER_LAG: &str = "herald_kafka_consumer_lag";

/// Whether partitions came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    /// The group gave this process these partitions.
    Assigned,
    /// The group took these partitions away; what was settled on them is
    /// committed, and their deliveries in flight were waited for.
    Revoked,
}

/// One rebalance of one group in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalanced {
    /// The herald group.
    pub group: String,
    /// Assigned or revoked.
    pub kind: RebalanceKind,
    /// The partitions, as (Kafka topic, partition).
    pub partitions: Vec<(String, i32)>,
}

/// A watcher of rebalances: runs on the group consumer's own thread, in the
/// middle of the rebalance, so it must return quickly (send the event to a
/// channel, say).
pub type RebalanceCallback = Arc<dyn Fn(&Rebalanced) + Send + Sync>;

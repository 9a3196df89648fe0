//! The contract a store implements, and the parts every store shares.
//!
//! A backend crate (`herald-sqlite`, `herald-postgres`, `herald-nats`,
//! `herald-kafka`) imports from here and from the root's user API
//! (`herald::{Envelope, Error, …}`), nothing else:
//! - [`transport`]: the [`Transport`](transport::Transport) trait, its
//!   features and inspection types;
//! - [`subscription`]: what a subscriber asks for and the stream it gets;
//! - [`queue`]: the delivery queue (flows, priority, key locks, ack
//!   deadlines, redelivery, dead-lettering) under group-less tails and
//!   broker groups;
//! - [`group`]: durable consumer groups over a stored log (claim plans,
//!   lease changes);
//! - [`member`]: a group's member stream, one claimer per group and
//!   process;
//! - [`log_tail`]: feeding a stored log into a queue;
//! - [`headers`]: the envelope as broker headers;
//! - [`retention`]: what a retention pass deletes;
//! - [`dead_lettering`]: the dead-letter writes a store has under way, and
//!   the waits every store shares;
//! - [`dedupe`]: where a handler's dedupe layer keeps processed ids;
//! - [`schemas`]: where a store keeps its contracts (schema subjects);
//! - [`fnv1a`] and [`partition_of`]: the hash every process computes
//!   alike, and the partition a partitioned store puts an event in.
//!
//! Imports `model`, `config` and `observe`; never the bus.

pub mod dead_lettering;
pub mod dedupe;
pub mod group;
pub mod headers;
pub mod log_tail;
pub mod member;
pub mod open_queues;
pub mod queue;
pub mod retention;
pub mod schemas;
pub mod subscription;
pub mod transport;

pub use crate::model::dead_letter::{select_pages, DeadLetterRow};
pub use crate::model::delivery::{BoxFuture, Settle};
pub use crate::model::traceparent::{TraceParent, TRACEPARENT};
pub use crate::observe::metrics::{Gauge, Metrics};
pub use dedupe::DedupeStore;

/// FNV-1a, 64 bits: a hash every process and build computes alike (for
/// names cut short and partitions, which other processes must agree on).
///
/// ```
/// assert_eq!(herald::backend::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
/// ```
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The partition, of `partitions`, that events placed by `by` (a key; for
/// a keyless event its id, or its topic under
/// [`KeylessPartition::Topic`](crate::config::KeylessPartition)) go to.
///
/// ```
/// let p = herald::backend::partition_of(b"chat.session.7", 8);
/// assert!(p < 8);
/// assert_eq!(p, herald::backend::partition_of(b"chat.session.7", 8));
/// ```
pub fn partition_of(by: &[u8], partitions: u32) -> u32 {
    (fnv1a(by) % u64::from(partitions.max(1))) as u32
}

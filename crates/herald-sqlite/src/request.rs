//! The writer's requests: what the parts of the store ask the writer task to
//! do in its transactions.
//!
//! Owns [`Request`] and its payloads ([`Claim`], [`Settlement`],
//! [`Processed`], a schema registration): plain data, a leaf that imports nothing of the crate, so
//! `conn` can hold the writer's queue without importing upward. Does not own
//! serving them: the writer (`writer`) runs each in a transaction with the
//! SQL of `log`, `group`, `processed` and `schemas`.

use std::sync::Arc;

use herald::backend::dead_lettering::Discards;
use herald::backend::group::{Claimed, Settled};
use herald::backend::schemas::{Registration, SchemaVersion};
use herald::{DeadLetter, Envelope, Pattern, Result, SubscribeSpec};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Work for the writer.
pub(crate) enum Request {
    /// One publish.
    Append {
        batch: Vec<Envelope>,
        reply: oneshot::Sender<Result<Vec<u64>>>,
    },
    /// Store a dead letter.
    DeadLetter(Box<DeadLetter>, oneshot::Sender<Result<()>>),
    /// Lease the next deliverable events of a group to a member.
    Claim(Box<Claim>, oneshot::Sender<Result<Claimed>>),
    /// Record how a group member settled a delivery.
    Settle(Box<Settlement>, oneshot::Sender<Result<()>>),
    /// Remember that a handler group processed a message.
    Processed(Box<Processed>, oneshot::Sender<Result<()>>),
    /// Register a schema version (`schemas::register`).
    RegisterSchema(Box<Registration>, oneshot::Sender<Result<SchemaVersion>>),
    /// Delete a schema subject.
    DeleteSchema(Pattern, oneshot::Sender<Result<()>>),
    /// Run the parked claims again: time passed (leases and delays run
    /// out) or another connection committed.
    Poke,
    /// The store closes: answer the parked claims and park no more.
    Close,
}

/// A member asks for up to `max` events (0: only register the group).
pub(crate) struct Claim {
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) max: usize,
    pub(crate) spec: SubscribeSpec,
    pub(crate) max_deliver: u32,
    /// What becomes of what the claim dead-letters (the store's).
    pub(crate) discards: Discards,
    /// Record the member as live (it was not, lately).
    pub(crate) refresh: bool,
    /// When nothing is claimable, wait in the writer until something is
    /// (`parked`) rather than answer with nothing.
    pub(crate) park: bool,
}

/// How a member settled the delivery of `pos` at `attempt`.
pub(crate) struct Settlement {
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) pos: i64,
    pub(crate) outcome: Settled,
    pub(crate) max_deliver: u32,
    /// What becomes of a dead letter it makes (the store's).
    pub(crate) discards: Discards,
    /// Events to append in the same transaction if this ack applies.
    pub(crate) effects: Vec<Envelope>,
    /// The key's next event the member holds, leased to it if this ack
    /// applies.
    pub(crate) next: Option<herald::backend::group::Next>,
}

/// One processed message id to remember, until `until_ms`.
pub(crate) struct Processed {
    pub(crate) group: String,
    pub(crate) id: Uuid,
    pub(crate) until_ms: i64,
}

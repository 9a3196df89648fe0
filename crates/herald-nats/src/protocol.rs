//! The request/reply protocol between a group's leader and its members in
//! other processes, and what the leader keeps of those members.
//!
//! Owns the wire types and subjects, `P.$group.<consumer>.{claim,settle,leave,state}`:
//! - `claim` `{member, max, wait_ms}` → up to `max` deliveries
//!   `[{token, envelope}]` (envelope JSON with `seq` and `attempt`), waiting
//!   up to `wait_ms` for the first and taking beyond it only those ready at
//!   once; a member claims only when its subscriber asks for the next
//!   delivery and nothing it claimed is left, and asks for its free
//!   capacity (`max_in_flight` less what it holds unsettled, at most
//!   [`CLAIM_MAX`]), so one round trip carries a backlog's worth while a
//!   small backlog still spreads over the members that ask;
//! - `settle` `[{token, outcome}]` (at most [`SETTLE_MAX`]) → one answer per
//!   settlement, in order, each `{"ok": true}` or `{"err": {code, message}}`:
//!   a member sends together the settlements made while its earlier ones
//!   were on their way, and the leader applies them at once (their acks go
//!   to JetStream pipelined); a token the leader does not know (a new
//!   leader, or a delivery whose ack wait passed) is the lease-lost error,
//!   and the event is delivered again (a lone `{token, outcome}`, as
//!   members before batches sent it, is still answered alone);
//! - `leave` `{member}`: the member closed;
//! - `state` `{topic, seq}` → the leader queue's view of an event.
//!
//! and [`Remotes`], the data a group's leader (`group`) holds of its remote
//! members. It sits on `conn` and below `group`; serving the protocol and
//! the remote member are `remote`'s, which sits above `group`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::{Delivery, Error, ErrorCode, Outcome, Result, Subscription, Topic};
use serde::{Deserialize, Serialize};

use crate::conn::Inner;

/// How long a claim waits at the leader for a first delivery.
pub(crate) const CLAIM_WAIT: Duration = Duration::from_millis(500);
/// Most deliveries one claim takes (only those ready at once beyond the
/// first).
pub(crate) const CLAIM_MAX: usize = 256;
/// Most settlements one settle request carries.
pub(crate) const SETTLE_MAX: usize = 256;

#[derive(Serialize, Deserialize)]
pub(crate) struct ClaimRequest {
    pub(crate) member: String,
    pub(crate) max: usize,
    pub(crate) wait_ms: u64,
    /// The group's patterns and kinds, as `herald::backend::group` writes them.
    pub(crate) patterns: String,
    pub(crate) kinds: i64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Claimed {
    pub(crate) token: u64,
    pub(crate) envelope: Box<serde_json::value::RawValue>,
}

#[derive(Serialize, Deserialize)]
struct Refusal {
    code: String,
    message: String,
}

impl Refusal {
    fn into_error(self) -> Error {
        Error::new(
            self.code.parse().unwrap_or(ErrorCode::Internal),
            self.message,
        )
    }
}

/// An answer: `{"ok": …}` or `{"err": {code, message}}`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Reply<T> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    ok: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<Refusal>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Reply<T> {
    pub(crate) fn ok(value: T) -> Self {
        Reply {
            ok: Some(value),
            err: None,
        }
    }

    pub(crate) fn into_result(self) -> Result<T> {
        match (self.ok, self.err) {
            (_, Some(r)) => Err(r.into_error()),
            (Some(v), None) => Ok(v),
            (None, None) => Err(Error::internal("an empty reply from the group's leader")),
        }
    }
}

/// A settle request: a batch, or (from a member of an earlier version)
/// one settlement, answered as it expects (`{"ok": true}` or `{"err": …}`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum SettleBody {
    Many(Vec<SettleRequest>),
    One(SettleRequest),
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SettleRequest {
    pub(crate) token: u64,
    pub(crate) outcome: WireOutcome,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum WireOutcome {
    Ack,
    Nack {
        delay_ms: Option<u64>,
        reason: Option<String>,
    },
    Defer {
        delay_ms: u64,
    },
    Term {
        code: String,
        reason: String,
    },
}

impl From<Outcome> for WireOutcome {
    fn from(o: Outcome) -> Self {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        match o {
            Outcome::Ack => WireOutcome::Ack,
            Outcome::Nack { delay, reason } => WireOutcome::Nack {
                delay_ms: delay.map(ms),
                reason,
            },
            Outcome::Defer { delay } => WireOutcome::Defer {
                delay_ms: ms(delay),
            },
            Outcome::Term { code, reason } => WireOutcome::Term {
                code: code.as_str().to_owned(),
                reason,
            },
        }
    }
}

impl From<WireOutcome> for Outcome {
    fn from(o: WireOutcome) -> Self {
        match o {
            WireOutcome::Ack => Outcome::Ack,
            WireOutcome::Nack { delay_ms, reason } => Outcome::Nack {
                delay: delay_ms.map(Duration::from_millis),
                reason,
            },
            WireOutcome::Defer { delay_ms } => Outcome::Defer {
                delay: Duration::from_millis(delay_ms),
            },
            WireOutcome::Term { code, reason } => Outcome::Term {
                code: code.parse().unwrap_or(ErrorCode::Internal),
                reason,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Leave {
    pub(crate) member: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StateRequest {
    pub(crate) topic: Topic,
    pub(crate) seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum WireState {
    Unknown,
    Pending,
    InFlight { attempt: u32 },
}

/// What the leader keeps of its remote members.
#[derive(Default)]
pub(crate) struct Remotes {
    pub(crate) members: Mutex<HashMap<String, Arc<RemoteSeat>>>,
    pub(crate) deliveries: Mutex<HashMap<u64, (Delivery, tokio::time::Instant)>>,
    pub(crate) next_token: std::sync::atomic::AtomicU64,
}

/// A remote member's place at the leader: its subscription of the queue.
pub(crate) struct RemoteSeat {
    pub(crate) sub: tokio::sync::Mutex<Subscription>,
    pub(crate) close: herald::backend::subscription::CloseHandle,
    pub(crate) seen: Mutex<tokio::time::Instant>,
}

/// The subject of `verb` for the leader of group consumer `consumer`.
pub(crate) fn subject(inner: &Inner, consumer: &str, verb: &str) -> String {
    format!("{}.$group.{consumer}.{verb}", inner.names.prefix())
}

/// `e` as a refusal.
pub(crate) fn refusal<T>(e: &Error) -> Reply<T> {
    Reply {
        ok: None,
        err: Some(Refusal {
            code: e.code().as_str().to_owned(),
            message: e.message().to_owned(),
        }),
    }
}

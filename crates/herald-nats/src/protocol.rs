//! Where an event stands, asked of the process that reads its part of a
//! group: the one request/reply exchange between a group's processes.
//!
//! Owns the subject `P.$group.<part consumer>.state` and its wire types:
//! `{topic, seq}` → `{"ok": {"state": "pending" | "in_flight",
//! "attempt"?}}` or `{"err": {code, message}}`. Every reader of a part
//! (one for a partition, every process of the group for the plain part)
//! answers when its queue knows the event and is silent otherwise
//! ([`answer_state`], served by `group` while it reads the part);
//! `inspect` asks and takes the first answer within [`STATE_WAIT`]
//! ([`state_at`]). Nothing else crosses processes: each reads its parts
//! straight from JetStream. Besides it, `P.$group.<group consumer>.wake`,
//! an empty core NATS message a process sends as it joins a group, gives
//! up a part or leaves, so the group's other processes look at the split
//! then rather than at their next second ([`wake_subject`]). It sits on
//! `conn`, below `group`.

use herald::{DeliveryState, Error, ErrorCode, Result, Topic};
use serde::{Deserialize, Serialize};

use crate::conn::Inner;

/// How long an asker waits for a reader that knows the event.
pub(crate) const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Refusal {
    code: String,
    message: String,
}

/// An answer: `{"ok": …}` or `{"err": {code, message}}`.
#[derive(Serialize, Deserialize)]
struct Reply<T> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    ok: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<Refusal>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Reply<T> {
    fn into_result(self) -> Result<T> {
        match (self.ok, self.err) {
            (_, Some(r)) => Err(Error::new(
                r.code.parse().unwrap_or(ErrorCode::Internal),
                r.message,
            )),
            (Some(v), None) => Ok(v),
            (None, None) => Err(Error::internal("an empty reply from a part's reader")),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StateRequest {
    topic: Topic,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum WireState {
    Pending,
    InFlight { attempt: u32 },
}

/// The subject on which the reader of the part whose consumer is
/// `part_consumer` answers where its events stand.
pub(crate) fn state_subject(inner: &Inner, part_consumer: &str) -> String {
    format!("{}.$group.{part_consumer}.state", inner.names.prefix())
}

/// The subject on which the processes of the group whose consumer is
/// `consumer` wake each other.
pub(crate) fn wake_subject(inner: &Inner, consumer: &str) -> String {
    format!("{}.$group.{consumer}.wake", inner.names.prefix())
}

/// Answer the state request `msg` from `state_of` (the reader's queue),
/// when it knows the event.
pub(crate) async fn answer_state(
    inner: &Inner,
    msg: &async_nats::Message,
    state_of: impl Fn(&Topic, u64) -> Option<DeliveryState>,
) {
    let Some(to) = msg.reply.clone() else { return };
    let reply: Reply<WireState> = match serde_json::from_slice::<StateRequest>(&msg.payload) {
        Err(e) => Reply {
            ok: None,
            err: Some(Refusal {
                code: ErrorCode::Validation.as_str().to_owned(),
                message: format!("a bad state request: {e}"),
            }),
        },
        Ok(req) => Reply {
            ok: Some(match state_of(&req.topic, req.seq) {
                Some(DeliveryState::InFlight { attempt }) => WireState::InFlight { attempt },
                Some(_) => WireState::Pending,
                None => return,
            }),
            err: None,
        },
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    // An asker that misses the reply reads the consumer instead.
    let _ = inner.client.publish(to, body.into()).await;
}

/// Where event `seq` of `topic` stands at a reader of the part whose
/// consumer is `part_consumer`, if one knows it.
pub(crate) async fn state_at(
    inner: &Inner,
    part_consumer: &str,
    topic: &Topic,
    seq: u64,
) -> Option<DeliveryState> {
    let body = serde_json::to_vec(&StateRequest {
        topic: topic.clone(),
        seq,
    })
    .ok()?;
    let reply = tokio::time::timeout(
        STATE_WAIT.min(inner.config.timeout()),
        inner
            .client
            .request(state_subject(inner, part_consumer), body.into()),
    )
    .await
    .ok()?
    .ok()?;
    let reply: Reply<WireState> = serde_json::from_slice(&reply.payload).ok()?;
    match reply.into_result().ok()? {
        WireState::InFlight { attempt } => Some(DeliveryState::InFlight { attempt }),
        WireState::Pending => Some(DeliveryState::Pending),
    }
}

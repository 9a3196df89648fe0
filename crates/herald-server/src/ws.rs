//! The WebSocket: subscribe, receive, ack/nack, publish and call as JSON
//! frames on one connection.
//!
//! Owns `GET /v1/ws` and its protocol ([`ClientFrame`] in, [`ServerFrame`]
//! out; see the README's "WebSocket protocol"). Each connection has one
//! writer task draining a queue of outgoing frames bounded in frames
//! (`HERALD_WS_BUFFER`) and in bytes (`HERALD_WS_BUFFER_BYTES`), one
//! feeder task per subscription, and one publisher task, so `publish`
//! frames are published one after another in the order received (all of
//! a connection's publishes, whatever their topic or key).
//!
//! Grants: `subscribe` for a pattern, `groups` to join a named group (and
//! so to settle its deliveries, which only its members receive), `serve`
//! to handle a command, `call` and `publish` for those frames.
//!
//! Memory per connection is bounded: queued frames by
//! `HERALD_WS_BUFFER_BYTES` (a single frame larger than that still goes,
//! alone), unacked deliveries by the same number of bytes across the
//! connection's subscriptions (besides each one's `max_in_flight`), and
//! calls waiting for their response by `HERALD_WS_MAX_PENDING_CALLS`.
//! When the connection closes, its calls are cancelled. Publish frames
//! waiting for the publisher take from the same byte budget.
//!
//! Idle clients: the server pings every half `HERALD_IDLE_TIMEOUT`; a
//! client that sends nothing, not even the pong, for the whole timeout is
//! disconnected (close code 1001), so a silent or half-open socket gives
//! its slot back. A connection handles at most `HERALD_MAX_SUBSCRIPTIONS`
//! commands, besides as many subscriptions; ids, `ref`s and term reasons are
//! at most 1 KiB; a nack's delay at most an hour.
//!
//! Durable subscriptions are consumer groups: a client that subscribes
//! with a `group` and disconnects leaves its unacked deliveries to be
//! redelivered (to the group's other members, or to the same client when
//! it reconnects and subscribes again), in order, none lost.
//!
//! Slow clients: a feeder waits while the connection's queue is full, and a
//! subscription holds at most `max_in_flight` unacked deliveries, so a
//! client that reads slowly is paused, not fed; events wait in the store
//! (durable) or the subscription's buffer. A client whose socket accepts no
//! frame for `HERALD_WS_STALL_TIMEOUT` (default 30 s) is disconnected (close code 1008) and its
//! unacked deliveries are redelivered. Nothing a slow client does touches
//! other connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use herald::CloseHandle;
use herald::{
    CommandHandle, Delivery, Envelope, ErrorCode, FailureSource, GroupOrdering, Payload,
    StartPosition,
};
use parking_lot::Mutex;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::auth::{Caller, Permission};
use crate::error::ApiError;
use crate::listener::Peer;
use crate::message::{MessageIn, Published};
use crate::state::AppState;

/// Default unacked deliveries one subscription may hold.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;

/// Where a subscription starts.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Start {
    /// The oldest retained event.
    Earliest,
    /// Only new events (the default).
    #[default]
    Latest,
    /// From this `seq`.
    Seq(u64),
    /// From this time.
    Time(DateTime<Utc>),
}

/// A frame a client sends: a JSON object whose `op` names the variant, the
/// variant's fields beside it (see [`ClientFrame::parse`]).
#[derive(Debug)]
pub enum ClientFrame {
    /// `subscribe`
    Subscribe(SubscribeFrame),
    /// `unsubscribe`
    Unsubscribe(UnsubscribeFrame),
    /// `ack`
    Ack(AckFrame),
    /// `nack`
    Nack(NackFrame),
    /// `term`
    Term(TermFrame),
    /// `handle`
    Handle(HandleFrame),
    /// `reply`
    Reply(ReplyFrame),
    /// `publish`
    Publish(PublishFrame),
    /// `call`
    Call(CallFrame),
}

#[derive(Deserialize)]
struct Op<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
}

impl ClientFrame {
    /// Decode a frame strictly: a known `op`, its fields of the right
    /// types, no others. (Decoded from the text in two steps, so payloads
    /// stay raw JSON: serde's internally tagged enums cannot hold them.)
    pub fn parse(text: &str) -> Result<ClientFrame, String> {
        fn body<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, String> {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
        let op: Op = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let frame = match op.op.as_ref() {
            "subscribe" => ClientFrame::Subscribe(body(text)?),
            "unsubscribe" => ClientFrame::Unsubscribe(body(text)?),
            "ack" => ClientFrame::Ack(body(text)?),
            "nack" => ClientFrame::Nack(body(text)?),
            "term" => ClientFrame::Term(body(text)?),
            "handle" => ClientFrame::Handle(body(text)?),
            "reply" => ClientFrame::Reply(body(text)?),
            "publish" => ClientFrame::Publish(body(text)?),
            "call" => ClientFrame::Call(body(text)?),
            other => {
                return Err(format!(
                    "unknown op {other:?}: expected subscribe, unsubscribe, ack, nack, term, handle, reply, publish or call"
                ))
            }
        };
        frame.check_names()?;
        Ok(frame)
    }

    /// The client's own names — a subscription's id, a `ref`, a term's
    /// reason — are echoed or stored: at most [`MAX_NAME_BYTES`] each, no
    /// control characters.
    fn check_names(&self) -> Result<(), String> {
        let (what, value) = match self {
            ClientFrame::Subscribe(f) => ("id", Some(&f.id)),
            ClientFrame::Unsubscribe(f) => ("id", Some(&f.id)),
            ClientFrame::Term(f) => ("reason", f.reason.as_ref()),
            ClientFrame::Publish(f) => ("ref", f.reference.as_ref()),
            ClientFrame::Call(f) => ("ref", f.reference.as_ref()),
            _ => return Ok(()),
        };
        match value {
            Some(v) if v.len() > MAX_NAME_BYTES => Err(format!(
                "`{what}` is {} bytes; at most {MAX_NAME_BYTES} are allowed",
                v.len()
            )),
            Some(v) if v.chars().any(char::is_control) => {
                Err(format!("`{what}` must not hold control characters"))
            }
            _ => Ok(()),
        }
    }
}

/// The longest subscription id, `ref` or term reason a frame may carry.
pub const MAX_NAME_BYTES: usize = 1024;

/// The longest nack delay (an hour, `HERALD_RETRY_MAX_DELAY`'s ceiling).
pub const MAX_NACK_DELAY_MS: u64 = 3_600_000;

impl ClientFrame {
    /// What an error about this frame names: a publish's or call's `ref`,
    /// a subscription's id, a command's topic, a delivery's or call's
    /// number.
    pub fn reference(&self) -> Option<String> {
        match self {
            ClientFrame::Subscribe(f) => Some(f.id.clone()),
            ClientFrame::Unsubscribe(f) => Some(f.id.clone()),
            ClientFrame::Ack(f) => Some(f.delivery.to_string()),
            ClientFrame::Nack(f) => Some(f.delivery.to_string()),
            ClientFrame::Term(f) => Some(f.delivery.to_string()),
            ClientFrame::Handle(f) => Some(f.topic.clone()),
            ClientFrame::Reply(f) => Some(f.call.to_string()),
            ClientFrame::Publish(f) => f.reference.clone(),
            ClientFrame::Call(f) => f.reference.clone(),
        }
    }

    /// Whether the frame asks for work (subscribe, publish, call, …) rather
    /// than settling a delivery or answering a call.
    pub fn is_request(&self) -> bool {
        !matches!(
            self,
            ClientFrame::Ack(_)
                | ClientFrame::Nack(_)
                | ClientFrame::Term(_)
                | ClientFrame::Reply(_)
        )
    }
}

/// Open subscription `id` on `pattern`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The client's name for it (unique on the connection).
    pub id: String,
    /// Topic pattern.
    pub pattern: String,
    /// A consumer group: durable, shared by its members, resumable.
    pub group: Option<String>,
    /// Where a new subscription or group starts.
    #[serde(default)]
    pub start: Start,
    /// Ack each delivery as it is sent (at most once; for tails).
    #[serde(default)]
    pub auto_ack: bool,
    /// Unacked deliveries it may hold (1–10000, default 100).
    pub max_in_flight: Option<u32>,
    /// `envelope` (default) or `cloudevents`: how `event` frames carry events.
    #[serde(default)]
    pub format: Format,
    /// The group's ordering: `per_key` (default) or `per_topic`
    /// ([`herald::GroupOrdering`]); only with a `group`.
    pub ordering: Option<String>,
}

/// How `event` frames carry events.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// herald's envelope, as `envelope`.
    #[default]
    Envelope,
    /// A structured-mode CloudEvent, as `cloudevent`.
    Cloudevents,
}

/// Close subscription `id`; its unacked deliveries, and the events it took
/// but had not sent, are handed back before the `unsubscribed` answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// Its id.
    pub id: String,
}

/// Settle delivery `delivery` as done.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The delivery's number, from its `event` frame.
    pub delivery: u64,
}

/// Hand delivery `delivery` back, for redelivery after `delay_ms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The delivery's number.
    pub delivery: u64,
    /// Wait this long first (default 0).
    pub delay_ms: Option<u64>,
}

/// Give delivery `delivery` up: it goes to the dead letters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The delivery's number.
    pub delivery: u64,
    /// Why.
    pub reason: Option<String>,
}

/// Handle command `topic` on this connection until it closes: calls
/// arrive as `command` frames, answered with `reply`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The command's topic.
    pub topic: String,
}

/// Answer `command` frame `call` with a payload or an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// The call's number, from its `command` frame.
    pub call: u64,
    /// The response payload (any JSON; default `null`).
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// Or the handler's error: a code (`VALIDATION`, `NOT_FOUND`, …) and a message.
    pub error: Option<ReplyError>,
}

/// Publish one message or a batch to `topic`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// Echoed in the answer.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The topic.
    pub topic: String,
    /// The messages (one or many).
    pub messages: Vec<MessageIn>,
}

/// Call command `topic`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallFrame {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// Echoed in the answer.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The command's topic.
    pub topic: String,
    /// The command.
    pub message: MessageIn,
    /// How long to wait (default `HERALD_TIMEOUT_SECONDS`).
    pub timeout_ms: Option<u64>,
}

/// A handler's error, as a `reply` frame carries it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyError {
    /// A stable code (`INTERNAL` when unknown).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// A frame the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// A subscription is open.
    Subscribed {
        /// Its id.
        id: &'a str,
    },
    /// A subscription is closed.
    Unsubscribed {
        /// Its id.
        id: &'a str,
    },
    /// An event for subscription `sub`; settle it by `delivery`.
    Event {
        /// The subscription.
        sub: &'a str,
        /// The delivery's number on this connection (0 with `auto_ack`).
        delivery: u64,
        /// The event (format `envelope`).
        #[serde(skip_serializing_if = "Option::is_none")]
        envelope: Option<&'a Envelope>,
        /// The event (format `cloudevents`).
        #[serde(skip_serializing_if = "Option::is_none")]
        cloudevent: Option<Box<serde_json::value::RawValue>>,
    },
    /// This connection handles command `topic` now.
    Handling {
        /// The command's topic.
        topic: &'a str,
    },
    /// A call of a command this connection handles; answer with `reply`.
    Command {
        /// The call's number on this connection.
        call: u64,
        /// The command.
        envelope: &'a Envelope,
    },
    /// A settlement went through.
    Settled {
        /// The delivery.
        delivery: u64,
    },
    /// A publish went through.
    Published {
        /// The request's `ref`.
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        /// The topic.
        topic: &'a str,
        /// Each event's id and seq.
        events: Vec<Published>,
    },
    /// A command's response.
    Response {
        /// The request's `ref`.
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        /// The response envelope.
        envelope: &'a Envelope,
    },
    /// Something failed; the connection stays open.
    Error {
        /// The request's `ref`, subscription id or delivery number, when
        /// the error concerns one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The stable error code.
        code: &'static str,
        /// What went wrong.
        message: String,
        /// Whether the same frame may succeed if sent again.
        retryable: bool,
    },
}

impl ServerFrame<'_> {
    fn text(&self) -> WsMessage {
        let text = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"op":"error","code":"INTERNAL","message":"encode: {e}","retryable":false}}"#
            )
        });
        WsMessage::Text(Utf8Bytes::from(text))
    }
}

fn error_frame(reference: Option<String>, e: &ApiError) -> WsMessage {
    let body = e.body();
    ServerFrame::Error {
        reference,
        code: e.code().as_str(),
        message: body.message,
        retryable: body.retryable,
    }
    .text()
}

/// Open a WebSocket (`?token=` carries the API token for browsers).
pub async fn upgrade(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = state.config.max_request_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| run(state, caller, peer, socket))
}

/// One subscription on a connection: the task feeding its deliveries to the
/// client, how to stop it, and how to close the subscription.
struct Sub {
    feeder: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    close: CloseHandle,
}

/// How long ending a subscription may take (handing back what it holds)
/// before its feeder is cut off and its store's ack deadline takes over.
const SUB_END_WAIT: Duration = Duration::from_secs(5);

impl Sub {
    /// Stop feeding and close the subscription: the delivery the feeder
    /// holds and the events the subscription claimed but did not hand out
    /// go back to the store before this returns (within [`SUB_END_WAIT`]).
    async fn end(mut self) {
        // Stop first: a feeder that sees the stream end before the stop
        // would report the end to the client as an error.
        let _ = self.stop.send(true);
        self.close.close();
        if tokio::time::timeout(SUB_END_WAIT, &mut self.feeder)
            .await
            .is_err()
        {
            tracing::warn!("a subscription took over {SUB_END_WAIT:?} to end: cut off");
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// Nack `deliveries` (unacked, taken from a closing subscription or
/// connection), all at once, waiting at most [`SUB_END_WAIT`].
async fn hand_back(deliveries: Vec<Delivery>) {
    let nacks = futures_util::future::join_all(deliveries.into_iter().map(Delivery::nack));
    if tokio::time::timeout(SUB_END_WAIT, nacks).await.is_err() {
        tracing::warn!("handing back unacked deliveries took over {SUB_END_WAIT:?}");
    }
}

/// An unacked delivery: its subscription's id, the delivery, the semaphore
/// its in-flight permit goes back to, and its share of the connection's
/// held-bytes budget.
type Held = (String, Delivery, Arc<Semaphore>, OwnedSemaphorePermit);

/// The queue of outgoing frames: bounded in frames by the channel and in
/// bytes by a semaphore whose permits a frame holds until it is written.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<(WsMessage, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    cap: u32,
}

impl Outbox {
    fn new(
        frames: usize,
        bytes: usize,
    ) -> (Outbox, mpsc::Receiver<(WsMessage, OwnedSemaphorePermit)>) {
        let (tx, rx) = mpsc::channel(frames);
        let cap = u32::try_from(bytes).unwrap_or(u32::MAX);
        let outbox = Outbox {
            tx,
            bytes: Arc::new(Semaphore::new(cap as usize)),
            cap,
        };
        (outbox, rx)
    }

    /// A frame's cost: its bytes, at most the whole budget (so a frame
    /// larger than the budget goes alone).
    fn cost(&self, msg: &WsMessage) -> u32 {
        u32::try_from(frame_len(msg))
            .unwrap_or(u32::MAX)
            .clamp(1, self.cap)
    }

    /// Queue `msg`, waiting for room; `false` once the writer is gone.
    async fn send(&self, msg: WsMessage) -> bool {
        let Ok(permit) = self.bytes.clone().acquire_many_owned(self.cost(&msg)).await else {
            return false;
        };
        self.tx.send((msg, permit)).await.is_ok()
    }

    /// Queue `msg` if there is room now.
    fn try_send(&self, msg: WsMessage) {
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(self.cost(&msg)) {
            let _ = self.tx.try_send((msg, permit));
        }
    }
}

/// What a connection's tasks share.
struct Conn {
    state: AppState,
    caller: Caller,
    peer: Peer,
    out: Outbox,
    /// Unacked deliveries by number.
    held: Mutex<HashMap<u64, Held>>,
    /// Bytes of unacked deliveries the connection may hold.
    held_bytes: Arc<Semaphore>,
    next_delivery: AtomicU64,
    /// Commands this connection handles; unregistered when it closes.
    handles: Mutex<Vec<CommandHandle>>,
    /// Calls sent to this connection awaiting its `reply`.
    calls: Mutex<HashMap<u64, oneshot::Sender<herald::Result<Payload>>>>,
    next_call: AtomicU64,
    /// Calls this connection made that wait for their response.
    pending_calls: Arc<Semaphore>,
    /// The tasks of those calls, aborted when the connection closes.
    call_tasks: Mutex<JoinSet<()>>,
}

async fn run(state: AppState, caller: Caller, peer: Peer, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = Outbox::new(state.config.ws_buffer, state.config.ws_buffer_bytes);
    // The writer says when it gave up on a stalled client, so the reader
    // stops too. (A writer that ended because the client closed its side
    // does not stop the reader: the frames the client sent before closing —
    // acks among them — are still read and applied.)
    let stalled = Arc::new(tokio::sync::Notify::new());
    let stall = stalled.clone();
    let stall_timeout = state.config.ws_stall_timeout;
    let writer = tokio::spawn(async move {
        while let Some((msg, permit)) = outgoing.recv().await {
            let closing = matches!(msg, WsMessage::Close(_));
            let sent = tokio::time::timeout(stall_timeout, sink.send(msg)).await;
            drop(permit);
            match sent {
                Ok(Ok(())) if !closing => {}
                Ok(Ok(())) => break,
                Ok(Err(_)) => break,
                Err(_) => {
                    stall.notify_one();
                    tracing::info!("websocket client stalled for {stall_timeout:?}: disconnecting");
                    let close = CloseFrame {
                        code: 1008,
                        reason: "stalled: frames not read".into(),
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        sink.send(WsMessage::Close(Some(close))),
                    )
                    .await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });
    let held_budget = state.config.ws_buffer_bytes.min(Semaphore::MAX_PERMITS);
    let conn = Arc::new(Conn {
        state: state.clone(),
        caller,
        peer,
        out: out.clone(),
        held: Mutex::new(HashMap::new()),
        held_bytes: Arc::new(Semaphore::new(held_budget)),
        next_delivery: AtomicU64::new(1),
        handles: Mutex::new(Vec::new()),
        calls: Mutex::new(HashMap::new()),
        next_call: AtomicU64::new(1),
        pending_calls: Arc::new(Semaphore::new(state.config.ws_max_pending_calls)),
        call_tasks: Mutex::new(JoinSet::new()),
    });
    // Publishes go through one task, in the order their frames arrived,
    // queued within the connection's byte budget.
    let (publish_tx, mut publish_rx) = mpsc::channel::<Queued>(PUBLISH_QUEUE);
    let publisher = {
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Some((frame, _bytes)) = publish_rx.recv().await {
                conn.publish(frame).await;
            }
        })
    };
    let publisher_queue = Publisher {
        tx: publish_tx,
        bytes: Arc::new(Semaphore::new(held_budget)),
        cap: conn.held_budget(),
    };
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut draining = state.draining_signal();
    // A client must answer pings (or send anything) within the idle timeout.
    let idle = state.config.idle_timeout;
    let mut heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(idle / 2);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = stalled.notified() => break,
            _ = async { drop(draining.wait_for(|d| *d).await) } => {
                let close = CloseFrame { code: 1001, reason: "server shutting down".into() };
                out.send(WsMessage::Close(Some(close))).await;
                break;
            }
            _ = ping.tick() => {
                if heard.elapsed() >= idle {
                    tracing::info!("websocket client silent for {idle:?}: disconnecting");
                    let close = CloseFrame { code: 1001, reason: "idle: no answer to pings".into() };
                    out.try_send(WsMessage::Close(Some(close)));
                    break;
                }
                out.try_send(WsMessage::Ping(Default::default()));
                continue;
            }
        };
        heard = tokio::time::Instant::now();
        let text = match msg {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(_))) => {
                let e = ApiError::validation("send JSON text frames, not binary");
                out.send(error_frame(None, &e)).await;
                continue;
            }
            Some(Err(e)) => {
                if let Some(close) = close_for(e) {
                    out.send(WsMessage::Close(Some(close))).await;
                }
                break;
            }
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Ok(_)) => continue,
        };
        let frame = match ClientFrame::parse(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                let e = ApiError::validation(format!("invalid frame: {e}"));
                out.send(error_frame(None, &e)).await;
                continue;
            }
        };
        // Requests count against the caller's rate limit; settlements and
        // replies do not (refusing an ack would only cause a redelivery).
        if frame.is_request() {
            if let Err(e) = state.charge(&conn.caller, conn.peer.0.ip()) {
                out.send(error_frame(frame.reference(), &e)).await;
                continue;
            }
        }
        conn.handle(frame, text.len(), &mut subs, &publisher_queue)
            .await;
    }
    // Unacked deliveries are released (redelivered) as they drop; calls
    // waiting on this connection fail with `UNAVAILABLE`; calls it made are
    // cancelled (before the socket closes); publishes it sent before
    // closing still go through.
    let mut calls = std::mem::take(&mut *conn.call_tasks.lock());
    calls.shutdown().await;
    futures_util::future::join_all(subs.into_values().map(Sub::end)).await;
    hand_back(conn.take_held(|_| true)).await;
    for handle in conn.handles.lock().drain(..) {
        handle.unregister();
    }
    conn.calls.lock().clear();
    drop(publisher_queue);
    let _ = publisher.await;
    drop(out);
    drop(conn);
    let _ = writer.await;
}

/// A frame's size in bytes, as the outgoing budget counts it.
fn frame_len(msg: &WsMessage) -> usize {
    match msg {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) | WsMessage::Ping(b) | WsMessage::Pong(b) => b.len(),
        WsMessage::Close(c) => 2 + c.as_ref().map_or(0, |c| c.reason.len()),
    }
}

/// Publish frames queued for a connection's publisher before its reader
/// waits (besides the byte budget).
const PUBLISH_QUEUE: usize = 64;

/// A publish frame and its share of the publish queue's byte budget.
type Queued = (PublishFrame, OwnedSemaphorePermit);

/// The connection's publish queue: frames in the order received, bounded
/// in frames and in bytes (`HERALD_WS_BUFFER_BYTES`).
struct Publisher {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    cap: u32,
}

impl Publisher {
    /// Queue `frame` (`size` bytes as received), waiting for room.
    async fn queue(&self, frame: PublishFrame, size: usize) {
        let cost = u32::try_from(size).unwrap_or(u32::MAX).clamp(1, self.cap);
        // The semaphore is never closed and the publisher task outlives the
        // reader, so neither step fails while the connection is open.
        if let Ok(permit) = self.bytes.clone().acquire_many_owned(cost).await {
            let _ = self.tx.send((frame, permit)).await;
        }
    }
}

/// The close frame a read error earns: 1007 for text that is not UTF-8,
/// 1009 for a message over `HERALD_MAX_REQUEST_BYTES`, 1002 for other
/// protocol errors; none when the connection is simply gone.
fn close_for(e: axum::Error) -> Option<CloseFrame> {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = e.into_inner();
    let (code, reason) = match inner.downcast_ref::<WsError>() {
        Some(WsError::Utf8(_)) => (1007, "text frame is not UTF-8"),
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            (1009, "message too large (HERALD_MAX_REQUEST_BYTES)")
        }
        Some(WsError::Capacity(_)) => (1009, "frame too large"),
        Some(WsError::Protocol(_)) => (1002, "protocol error"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

impl Conn {
    async fn send(&self, msg: WsMessage) {
        self.out.send(msg).await;
    }

    async fn handle(
        self: &Arc<Self>,
        frame: ClientFrame,
        size: usize,
        subs: &mut HashMap<String, Sub>,
        publisher: &Publisher,
    ) {
        match frame {
            ClientFrame::Subscribe(SubscribeFrame {
                id,
                pattern,
                group,
                start,
                auto_ack,
                max_in_flight,
                format,
                ordering,
                ..
            }) => {
                let options = SubOptions {
                    group,
                    start,
                    auto_ack,
                    max_in_flight,
                    format,
                    ordering,
                };
                let reply = match self.subscribe(&id, &pattern, options, subs).await {
                    Ok(()) => ServerFrame::Subscribed { id: &id }.text(),
                    Err(e) => error_frame(Some(id.clone()), &e),
                };
                self.send(reply).await;
            }
            ClientFrame::Unsubscribe(UnsubscribeFrame { id, .. }) => {
                let reply = match subs.remove(&id) {
                    Some(sub) => {
                        sub.end().await;
                        hand_back(self.take_held(|s| s == id)).await;
                        ServerFrame::Unsubscribed { id: &id }.text()
                    }
                    None => error_frame(
                        Some(id.clone()),
                        &ApiError::new(ErrorCode::NotFound, format!("no subscription {id:?}")),
                    ),
                };
                self.send(reply).await;
            }
            ClientFrame::Ack(AckFrame { delivery, .. }) => self.settle(delivery, Settle::Ack).await,
            ClientFrame::Nack(NackFrame {
                delivery, delay_ms, ..
            }) => {
                let delay_ms = delay_ms.unwrap_or(0);
                if delay_ms > MAX_NACK_DELAY_MS {
                    let e = ApiError::validation(format!(
                        "delay_ms={delay_ms} is not allowed: expected 0..={MAX_NACK_DELAY_MS}"
                    ));
                    return self.send(error_frame(Some(delivery.to_string()), &e)).await;
                }
                self.settle(delivery, Settle::Nack(Duration::from_millis(delay_ms)))
                    .await
            }
            ClientFrame::Term(TermFrame {
                delivery, reason, ..
            }) => {
                let reason = reason.unwrap_or_else(|| "terminated by the client".into());
                self.settle(delivery, Settle::Term(reason)).await
            }
            ClientFrame::Handle(HandleFrame { topic, .. }) => {
                let reply = match self.handle_command(&topic) {
                    Ok(()) => ServerFrame::Handling { topic: &topic }.text(),
                    Err(e) => error_frame(Some(topic.clone()), &e),
                };
                self.send(reply).await;
            }
            ClientFrame::Reply(ReplyFrame {
                call,
                payload,
                error,
                ..
            }) => {
                let answer = match (payload, error) {
                    (Some(_), Some(_)) => {
                        let e = ApiError::validation("a reply has `payload` or `error`, not both");
                        return self.send(error_frame(Some(call.to_string()), &e)).await;
                    }
                    (_, Some(e)) => Err(herald::Error::new(
                        e.code.parse().unwrap_or(ErrorCode::Internal),
                        e.message,
                    )),
                    (Some(p), None) => Payload::from_json_text(String::from(Box::<str>::from(p))),
                    (None, None) => Ok(Payload::null()),
                };
                match self.calls.lock().remove(&call) {
                    Some(waiting) => {
                        let _ = waiting.send(answer);
                    }
                    None => {
                        let e = ApiError::new(
                            ErrorCode::NotFound,
                            format!("no call {call} is waiting (answered, or timed out)"),
                        );
                        self.out.try_send(error_frame(Some(call.to_string()), &e));
                    }
                }
            }
            ClientFrame::Publish(frame) => publisher.queue(frame, size).await,
            ClientFrame::Call(frame) => self.call(frame).await,
        }
    }

    /// Publish a `publish` frame's messages and answer it.
    async fn publish(&self, frame: PublishFrame) {
        let PublishFrame {
            reference,
            topic,
            messages,
            ..
        } = frame;
        let reply =
            match crate::publish::publish_messages(&self.state, &self.caller, &topic, messages)
                .await
            {
                Ok(events) => ServerFrame::Published {
                    reference: reference.as_deref(),
                    topic: &topic,
                    events,
                }
                .text(),
                Err(e) => error_frame(reference, &e),
            };
        self.send(reply).await;
    }

    /// Start a `call` frame's call on a task of its own, under the
    /// connection's limit of pending calls; it is cancelled when the
    /// connection closes.
    async fn call(self: &Arc<Self>, frame: CallFrame) {
        let CallFrame {
            reference,
            topic,
            message,
            timeout_ms,
            ..
        } = frame;
        let Ok(permit) = self.pending_calls.clone().try_acquire_owned() else {
            let max = self.state.config.ws_max_pending_calls;
            let e = ApiError::new(
                ErrorCode::Backpressure,
                format!("{max} calls are already waiting on this connection (HERALD_WS_MAX_PENDING_CALLS)"),
            );
            return self.send(error_frame(reference, &e)).await;
        };
        let conn = self.clone();
        let mut tasks = self.call_tasks.lock();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let reply = match crate::publish::call_command(
                &conn.state,
                &conn.caller,
                &topic,
                message,
                timeout_ms,
            )
            .await
            {
                Ok(envelope) => ServerFrame::Response {
                    reference: reference.as_deref(),
                    envelope: &envelope,
                }
                .text(),
                Err(e) => error_frame(reference.clone(), &e),
            };
            drop(permit);
            conn.send(reply).await;
        });
    }

    async fn subscribe(
        self: &Arc<Self>,
        id: &str,
        pattern: &str,
        options: SubOptions,
        subs: &mut HashMap<String, Sub>,
    ) -> Result<(), ApiError> {
        let SubOptions {
            group,
            start,
            auto_ack,
            max_in_flight,
            format,
            ordering,
        } = options;
        self.caller.require(Permission::Subscribe, pattern)?;
        if let Some(g) = &group {
            self.caller.require(Permission::Group, g)?;
        }
        if subs.contains_key(id) {
            return Err(ApiError::validation(format!(
                "subscription {id:?} is already open"
            )));
        }
        let max = self.state.config.max_subscriptions;
        if subs.len() >= max {
            return Err(ApiError::new(
                ErrorCode::Backpressure,
                format!(
                    "{max} subscriptions is the limit per connection (HERALD_MAX_SUBSCRIPTIONS)"
                ),
            ));
        }
        let ordering = match (ordering, &group) {
            (None, _) => GroupOrdering::PerKey,
            (Some(o), Some(_)) => GroupOrdering::parse(&o)?,
            (Some(_), None) => return Err(ApiError::validation(
                "ordering applies to a group: a subscription without one gets each topic in order",
            )),
        };
        let in_flight = max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=10_000).contains(&in_flight) {
            return Err(ApiError::validation(format!(
                "max_in_flight={in_flight} is not allowed: expected 1..=10000"
            )));
        }
        let mut request = self
            .state
            .bus
            .subscribe_raw(pattern)
            .start(match start {
                Start::Earliest => StartPosition::Earliest,
                Start::Latest => StartPosition::Latest,
                Start::Seq(n) => StartPosition::Seq(n),
                Start::Time(t) => StartPosition::Time(t),
            })
            .buffer(self.subscription_buffer())
            .ordering(ordering);
        // A WebSocket subscription names its group to be durable; one that
        // names none is ephemeral, as a browser's tail should be.
        request = match group {
            Some(g) => request.group(g),
            None => request.ephemeral(),
        };
        let mut subscription = request.await?;
        let close = subscription.close_handle();
        let (stop, stopped) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(in_flight as usize));
        let conn = self.clone();
        let sub_id = id.to_owned();
        let feeder = tokio::spawn(async move {
            // Once the subscription is ended, the delivery in hand goes
            // back, and the subscription runs to its end, handing back
            // what it claimed.
            let stop = || {
                let mut stopped = stopped.clone();
                async move { drop(stopped.wait_for(|s| *s).await) }
            };
            while let Some(item) = subscription.next().await {
                let delivery = match item {
                    Ok(d) => d,
                    Err(e) => {
                        conn.send(error_frame(Some(sub_id.clone()), &e.into()))
                            .await;
                        continue;
                    }
                };
                let number = if auto_ack {
                    0
                } else {
                    conn.next_delivery.fetch_add(1, Ordering::Relaxed)
                };
                let frame = event_frame(&sub_id, number, delivery.envelope(), format);
                if auto_ack {
                    tokio::select! {
                        _ = conn.send(frame) => { let _ = delivery.ack().await; }
                        _ = stop() => { let _ = delivery.nack().await; }
                    }
                    continue;
                }
                let cost = u32::try_from(frame_len(&frame))
                    .unwrap_or(u32::MAX)
                    .clamp(1, conn.held_budget());
                let room = async {
                    let permit = permits.clone().acquire_owned().await.ok()?;
                    let bytes = conn
                        .held_bytes
                        .clone()
                        .acquire_many_owned(cost)
                        .await
                        .ok()?;
                    permit.forget();
                    Some(bytes)
                };
                let bytes = tokio::select! {
                    room = room => room,
                    _ = stop() => None,
                };
                let Some(bytes) = bytes else {
                    let _ = delivery.nack().await;
                    continue;
                };
                conn.held
                    .lock()
                    .insert(number, (sub_id.clone(), delivery, permits.clone(), bytes));
                tokio::select! {
                    _ = conn.send(frame) => {}
                    _ = stop() => {}
                }
            }
            if !*stopped.borrow() {
                let e = ApiError::new(ErrorCode::Unavailable, "the subscription ended");
                conn.send(error_frame(Some(sub_id.clone()), &e)).await;
            }
        });
        subs.insert(
            id.to_owned(),
            Sub {
                feeder,
                stop,
                close,
            },
        );
        Ok(())
    }

    /// Events a subscription of this connection buffers: the bus's
    /// setting, but no more than `HERALD_WS_BUFFER_BYTES` of events at the
    /// largest payload allowed (at least 16), so a client that reads
    /// slowly keeps little of the store in the server's memory.
    fn subscription_buffer(&self) -> usize {
        let config = self.state.bus.config();
        let largest = config.limits().payload_bytes().max(1);
        (self.state.config.ws_buffer_bytes / largest)
            .max(16)
            .min(config.buffer())
    }

    /// The whole held-bytes budget, in permits.
    fn held_budget(&self) -> u32 {
        u32::try_from(
            self.state
                .config
                .ws_buffer_bytes
                .min(Semaphore::MAX_PERMITS),
        )
        .unwrap_or(u32::MAX)
    }

    /// Register this connection as `topic`'s command handler.
    fn handle_command(self: &Arc<Self>, topic: &str) -> Result<(), ApiError> {
        self.caller.require(Permission::Serve, topic)?;
        let max = self.state.config.max_subscriptions;
        if self.handles.lock().len() >= max {
            return Err(ApiError::new(
                ErrorCode::Backpressure,
                format!("{max} commands is the limit one connection may handle (HERALD_MAX_SUBSCRIPTIONS)"),
            ));
        }
        let conn = Arc::downgrade(self);
        let handle = self
            .state
            .bus
            .handle_command(topic, move |request: Envelope| {
                let conn = conn.clone();
                async move {
                    let gone = || {
                        herald::Error::new(
                            ErrorCode::Unavailable,
                            "the handling client disconnected",
                        )
                    };
                    let conn = conn.upgrade().ok_or_else(gone)?;
                    let call = conn.next_call.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    conn.calls.lock().insert(call, tx);
                    // A call given up (timed out, its caller gone) stops
                    // waiting for its reply here.
                    let _forget = Forget {
                        conn: Arc::downgrade(&conn),
                        call,
                    };
                    conn.send(
                        ServerFrame::Command {
                            call,
                            envelope: &request,
                        }
                        .text(),
                    )
                    .await;
                    drop(conn);
                    rx.await.map_err(|_| gone())?
                }
            })?;
        self.handles.lock().push(handle);
        Ok(())
    }

    /// Take the unacked deliveries of the subscriptions `which` picks.
    fn take_held(&self, which: impl Fn(&str) -> bool) -> Vec<Delivery> {
        let mut held = self.held.lock();
        let numbers: Vec<u64> = held
            .iter()
            .filter(|(_, (sub, ..))| which(sub))
            .map(|(n, _)| *n)
            .collect();
        numbers
            .into_iter()
            .filter_map(|n| held.remove(&n))
            .map(|(_, delivery, ..)| delivery)
            .collect()
    }

    async fn settle(&self, number: u64, how: Settle) {
        let held = self.held.lock().remove(&number);
        let Some((_, delivery, permits, bytes)) = held else {
            let e = ApiError::new(
                ErrorCode::NotFound,
                format!("no unsettled delivery {number} on this connection"),
            );
            return self.send(error_frame(Some(number.to_string()), &e)).await;
        };
        permits.add_permits(1);
        drop(bytes);
        let settled = match how {
            Settle::Ack => delivery.ack().await,
            Settle::Nack(d) if d.is_zero() => delivery.nack().await,
            Settle::Nack(d) => delivery.nack_after(d).await,
            Settle::Term(reason) => {
                delivery
                    .term_as(FailureSource::Gateway, ErrorCode::Validation, reason)
                    .await
            }
        };
        let reply = match settled {
            Ok(()) => ServerFrame::Settled { delivery: number }.text(),
            Err(e) => error_frame(Some(number.to_string()), &e.into()),
        };
        self.send(reply).await;
    }
}

/// Removes a call from its handling connection's table when the call is
/// done or given up.
struct Forget {
    conn: std::sync::Weak<Conn>,
    call: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.calls.lock().remove(&self.call);
        }
    }
}

/// A subscription's options, from its `subscribe` frame.
struct SubOptions {
    group: Option<String>,
    start: Start,
    auto_ack: bool,
    max_in_flight: Option<u32>,
    format: Format,
    ordering: Option<String>,
}

/// The `event` frame of delivery `number` of `env` on subscription `sub`.
fn event_frame(sub: &str, number: u64, env: &Envelope, format: Format) -> WsMessage {
    let (envelope, cloudevent) = match format {
        Format::Envelope => (Some(env), None),
        Format::Cloudevents => (None, Some(crate::cloudevents::from_envelope(env))),
    };
    ServerFrame::Event {
        sub,
        delivery: number,
        envelope,
        cloudevent,
    }
    .text()
}

enum Settle {
    Ack,
    Nack(Duration),
    Term(String),
}

//! Commands across processes: NATS request/reply.
//!
//! Owns the transport's side of `Bus::handle_command` and `Bus::call`. A
//! process's handler of command `t` answers requests on subject
//! `P.$cmd.<t>` in queue group `herald` (several processes running the same
//! service share the calls, each call reaching one of them). A request is
//! the command envelope as headers and body (`herald::backend::headers`); the reply
//! is the response envelope the same way, or, for an error, an empty body
//! with `Herald-Error-Code` and `Herald-Error-Message`, so the code is the
//! same on every side. A plain NATS client can call a herald handler (its
//! request needs no header) and read the reply. No process answering is
//! `NOT_FOUND`; no reply in time, `TIMEOUT`. It sits on `conn` and
//! `codec`, just below `transport`, and touches no stream.
//!
//! Withdrawing an export drains its subscription, and a call this process
//! makes to that topic meanwhile waits until the server has stopped routing
//! to it (the withdrawal's flush), so a call right after `unregister` is
//! `NOT_FOUND`, not a request lost in the drain: async-nats forgets a
//! draining subscription one read after its UNSUB is written, and a request
//! the server routed to it before reading the UNSUB, still on the wire,
//! would go unanswered until the caller's timeout.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use herald::backend::headers::Origin;
use herald::backend::transport::{CommandExport, CommandServe};
use herald::backend::BoxFuture;
use herald::{Envelope, Error, ErrorCode, Result, Topic};

use crate::conn::Inner;
use crate::errors;

/// The header of an error's code in a reply.
pub const ERROR_CODE: &str = "Herald-Error-Code";
/// The header of an error's message in a reply.
pub const ERROR_MESSAGE: &str = "Herald-Error-Message";

/// The queue group command handlers answer in.
const QUEUE: &str = "herald";

/// Answer calls to `topic` from other processes with `serve` until the
/// export drops.
pub(crate) fn export(inner: &Arc<Inner>, topic: &Topic, serve: CommandServe) -> CommandExport {
    let inner_task = inner.clone();
    let topic = topic.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (withdrawn, watch_withdrawn) = tokio::sync::watch::channel(false);
    let export = Export {
        stop: Some(stop),
        inner: Arc::downgrade(inner),
        topic: topic.clone(),
        withdrawn: watch_withdrawn,
    };
    tokio::spawn(async move {
        // Told when this task ends, however it ends.
        let _withdrawn = Withdrawn(withdrawn);
        let inner = inner_task;
        let subject = inner.names.command_subject(topic.as_str());
        let mut requests = match inner
            .client
            .queue_subscribe(subject, QUEUE.to_owned())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(topic = %topic, error = %e, "cannot serve a command to other processes");
                return;
            }
        };
        let mut shutdown = inner.shutdown.subscribe();
        loop {
            let msg = tokio::select! {
                m = requests.next() => m,
                _ = shutdown.changed() => return,
                _ = &mut stopped => {
                    // Withdrawn: stop taking calls, and answer those already
                    // here (`NOT_FOUND` now).
                    if requests.drain().await.is_err() {
                        return;
                    }
                    while let Some(msg) = requests.next().await {
                        answer(&inner, topic.clone(), serve.clone(), msg).await;
                    }
                    // The UNSUB was written before this PING: its PONG
                    // says the server routes here no more.
                    let _ = inner.client.flush().await;
                    return;
                }
            };
            let Some(msg) = msg else { return };
            let (inner, topic, serve) = (inner.clone(), topic.clone(), serve.clone());
            tokio::spawn(async move { answer(&inner, topic, serve, msg).await });
        }
    });
    Box::new(export)
}

/// Stops serving a command when dropped, and marks it withdrawing in its
/// store until the server has stopped routing calls to it.
struct Export {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    inner: std::sync::Weak<Inner>,
    topic: Topic,
    withdrawn: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut withdrawing = inner
                .withdrawing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            withdrawing.retain(|_, w| !*w.borrow());
            withdrawing.insert(self.topic.clone(), self.withdrawn.clone());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends `true` when dropped: the export's task has ended.
struct Withdrawn(tokio::sync::watch::Sender<bool>);

impl Drop for Withdrawn {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Wait, up to `timeout`, for a withdrawal of `topic`'s export in this
/// process to reach the server.
async fn withdrawn(inner: &Inner, topic: &Topic, timeout: Duration) {
    let pending = inner
        .withdrawing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(topic)
        .cloned();
    if let Some(mut done) = pending {
        let _ = tokio::time::timeout(timeout, done.wait_for(|w| *w)).await;
    }
}

async fn answer(inner: &Inner, topic: Topic, serve: CommandServe, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let origin = Origin {
        time_ms: chrono::Utc::now().timestamp_millis(),
        unique: fastrand::u64(..),
        source: crate::codec::PLAIN_SOURCE,
    };
    let pairs = crate::codec::header_pairs(msg.headers.as_ref());
    let command = herald::backend::headers::decode(topic, pairs, msg.payload.clone(), origin);
    let outcome = match command {
        Ok(command) => serve(command).await,
        Err(e) => Err(e),
    };
    let (headers, body) = match outcome.and_then(|response| crate::codec::headers_of(&response)) {
        Ok(encoded) => encoded,
        Err(e) => (error_headers(&e), bytes::Bytes::new()),
    };
    // A caller that gave up does not hear the answer; nothing else to do.
    let _ = inner
        .client
        .publish_with_headers(reply, headers, body)
        .await;
}

/// Call the handler of `command` in another process.
pub(crate) fn call(
    inner: &Arc<Inner>,
    command: Envelope,
    timeout: Duration,
) -> BoxFuture<'static, Result<Envelope>> {
    let inner = inner.clone();
    Box::pin(async move {
        inner.check_open()?;
        let topic = command.topic().clone();
        let (headers, body) = crate::codec::headers_of(&command)?;
        if body.len() + 4096 > inner.client.server_info().max_payload {
            return Err(Error::new(
                ErrorCode::Backpressure,
                format!("command `{topic}` is too large for one NATS message"),
            ));
        }
        withdrawn(&inner, &topic, timeout).await;
        let subject = inner.names.command_subject(topic.as_str());
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body)
            .timeout(Some(timeout));
        let reply = match inner.client.send_request(subject, request).await {
            Ok(r) => r,
            Err(e) => {
                use async_nats::RequestErrorKind as K;
                return Err(match e.kind() {
                    K::NoResponders => Error::new(
                        ErrorCode::NotFound,
                        format!("no handler is registered for command `{topic}`"),
                    ),
                    K::TimedOut => Error::new(
                        ErrorCode::Timeout,
                        format!("command `{topic}` got no response within {timeout:?}"),
                    ),
                    K::Other => errors::nats(ErrorCode::Unavailable, "call a command", e),
                }
                .with_correlation_id(command.correlation_id()));
            }
        };
        if let Some(code) = reply.headers.as_ref().and_then(|h| h.get(ERROR_CODE)) {
            let message = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(ERROR_MESSAGE))
                .map_or_else(String::new, |m| m.as_str().to_owned());
            return Err(Error::new(
                code.as_str().parse().unwrap_or(ErrorCode::Internal),
                message,
            )
            .with_correlation_id(command.correlation_id()));
        }
        let origin = Origin {
            time_ms: chrono::Utc::now().timestamp_millis(),
            unique: fastrand::u64(..),
            source: crate::codec::PLAIN_SOURCE,
        };
        herald::backend::headers::decode(
            topic,
            crate::codec::header_pairs(reply.headers.as_ref()),
            reply.payload,
            origin,
        )
    })
}

fn error_headers(e: &Error) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_CODE, e.code().as_str());
    headers.insert(
        ERROR_MESSAGE,
        e.message().replace(['\r', '\n'], " ").as_str(),
    );
    headers
}

//! Request ids, the access log, and keeping keep-alive honest.
//!
//! Owns the [`access`] middleware, the outermost layer of every route:
//!
//! - **Request id.** A request's `X-Request-Id` is kept when it is 1–128
//!   characters of `[A-Za-z0-9._:-]`, else a fresh UUID v7 is made; it is
//!   echoed in the response's `X-Request-Id`, logged, and put in every
//!   error body (`request_id`, read from [`current_request_id`]).
//! - **Access log.** One `info` line per request under the target
//!   `herald::access`: client address, method, path (never the query, which
//!   may hold `?token=`), status, milliseconds, the caller's token name and
//!   the request id. `HERALD_LOG=info,herald::access=off` silences it.
//! - **Body timeout.** A request body that sends no bytes for
//!   `HERALD_HEADER_READ_TIMEOUT` fails to read (`VALIDATION`), so a client
//!   that drips a body cannot hold a connection.
//! - **Connection: close.** An answer sent before the request's body was
//!   read to its end (a 401, 403 or 429 decided from the headers) closes
//!   the connection, since the unread body cannot be told from the next
//!   request; the answer then says `Connection: close`, so a keep-alive
//!   client opens a new connection instead of failing its next request.
//!
//! Does not own who the caller is (`state::authorize` fills in the name).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::listener::Peer;
use crate::state::AppState;

/// The request id header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// The caller's token name, filled in by `state::authorize` for the log.
#[derive(Clone, Default)]
pub struct CallerName(Arc<OnceLock<String>>);

impl CallerName {
    /// Record the caller's name.
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_owned());
    }
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// See the module.
pub async fn access(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(a))| *a);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let started = Instant::now();
    let caller = CallerName::default();
    let read = Arc::new(AtomicBool::new(false));
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(caller.clone());
    let body = Body::new(Tracked {
        inner: body,
        read: read.clone(),
        timeout: state.config.header_read_timeout,
        stalled: None,
    });
    let req = Request::from_parts(parts, body);
    let mut response = CURRENT.scope(id.clone(), next.run(req)).await;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(&REQUEST_ID, v);
    }
    if has_body && !read.load(Ordering::Acquire) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::info!(
        target: "herald::access",
        peer = %peer.map_or_else(|| "-".to_owned(), |p: SocketAddr| p.to_string()),
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        caller = caller.0.get().map_or("-", String::as_str),
        request_id = %id,
    );
    response
}

/// A request body that notes when it has been read to its end, and fails
/// when it sends nothing for `timeout`.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            let timeout = self.timeout;
            let stalled = self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if stalled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(axum::Error::new(format!(
                    "no bytes of the body for {timeout:?} (HERALD_HEADER_READ_TIMEOUT)"
                )))));
            }
            return Poll::Pending;
        }
        self.stalled = None;
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(acceptable("req-1:a.b_c"));
        assert!(acceptable(&"a".repeat(128)));
        assert!(!acceptable(&"a".repeat(129)));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("a\"b"));
    }
}

//! Accepting connections and serving each: the connection limits, the
//! header-read and idle timeouts, and TLS.
//!
//! Owns [`Listener`] and [`serve`]. A task accepts TCP connections; each
//! takes a permit of the connection limit (`HERALD_MAX_CONNECTIONS`) and one
//! of its client address's (`HERALD_MAX_CONNECTIONS_PER_CLIENT`) for as long
//! as it lives, an upgraded WebSocket included. A connection over either
//! limit gets a complete `503` response with a `BACKPRESSURE` body and is
//! closed (its request is drained first, so the close never turns into a
//! reset that loses the answer); a flood of connections costs the server a
//! write each and never a stall of the clients it already serves.
//!
//! Each connection is served by hyper's HTTP/1 state machine under a
//! watchdog that holds no slot forever before a request is in hand: a
//! connection must send a request's headers within
//! `HERALD_HEADER_READ_TIMEOUT` of connecting or of the request's first
//! byte, and may sit idle between requests for `HERALD_IDLE_TIMEOUT`;
//! otherwise it is closed. While a request is being handled the watchdog
//! waits (the request's body has its own timeout, `access`), and a response
//! still being written counts as activity. With TLS configured, handshakes
//! run on their own tasks (10 s to finish), so a slow handshake never holds
//! up accepting.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use herald::{Error, Result};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor from PEM files: the certificate chain and the private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |key_name: &str, path: &Path, why: String| {
        herald::config::invalid(
            key_name,
            path.display(),
            &format!("a readable PEM file ({why})"),
        )
    };
    let certs = {
        let mut r = io::BufReader::new(
            std::fs::File::open(cert).map_err(|e| bad("HERALD_TLS_CERT", cert, e.to_string()))?,
        );
        rustls_pemfile::certs(&mut r)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| bad("HERALD_TLS_CERT", cert, e.to_string()))?
    };
    if certs.is_empty() {
        return Err(bad("HERALD_TLS_CERT", cert, "no certificate in it".into()));
    }
    let private = {
        let mut r = io::BufReader::new(
            std::fs::File::open(key).map_err(|e| bad("HERALD_TLS_KEY", key, e.to_string()))?,
        );
        rustls_pemfile::private_key(&mut r)
            .map_err(|e| bad("HERALD_TLS_KEY", key, e.to_string()))?
            .ok_or_else(|| bad("HERALD_TLS_KEY", key, "no private key in it".into()))?
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| bad("HERALD_TLS_KEY", key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Most refusals (503 answers to connections over a limit) under way at
/// once; past it, such connections are closed unanswered.
const MAX_REFUSALS: usize = 1_024;

/// Most bytes a refused connection's request head is read for before the
/// refusal is written anyway.
const REFUSED_HEAD_MAX: usize = 16 * 1024;

/// How the listener bounds connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once (`HERALD_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Connections at once from one client address
    /// (`HERALD_MAX_CONNECTIONS_PER_CLIENT`).
    pub max_per_client: usize,
}

/// Accepted connections under the limits, TLS already negotiated.
pub struct Listener {
    accepted: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl Listener {
    /// Serve `tcp` within `limits`.
    pub fn new(tcp: TcpListener, limits: Limits, tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, limits, tls, tx));
        Ok(Listener {
            accepted,
            local,
            acceptor,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next accepted connection; `None` once the accept loop ended.
    pub async fn accept(&mut self) -> Option<(Conn, SocketAddr)> {
        self.accepted.recv().await
    }
}

/// Connections held per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place under its address's limit; given back on drop.
struct ClientSlot {
    ip: IpAddr,
    table: Arc<PerClient>,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut held = self.0.lock();
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            ip,
            table: self.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.table.0.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = per_client.take(peer.ip(), limits.max_per_client);
        let permit = permits.clone().try_acquire_owned().ok();
        let (Some(slot), Some(permit)) = (slot, permit) else {
            let why = if permits.available_permits() == 0 {
                format!(
                    "too many connections (HERALD_MAX_CONNECTIONS={})",
                    limits.max_connections
                )
            } else {
                format!(
                    "too many connections from {} (HERALD_MAX_CONNECTIONS_PER_CLIENT={})",
                    peer.ip(),
                    limits.max_per_client
                )
            };
            if let Ok(r) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, &why).await;
                    drop(r);
                });
            }
            continue;
        };
        let held = Held {
            _permit: permit,
            _slot: slot,
        };
        match &tls {
            None => {
                let conn = Conn {
                    io: Io::Plain(stream),
                    activity: Arc::default(),
                    _held: held,
                };
                if tx.send((conn, peer)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let conn = Conn {
                                io: Io::Tls(Box::new(s)),
                                activity: Arc::default(),
                                _held: held,
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Answer a connection over a limit and close it: the request's head read
/// first (for at most a second: a client answered before it has asked may
/// take the answer for a stray message, as hyper's client does, and fail
/// with no status at all), then the answer, the write side shut, and
/// whatever else the client sent read away (for at most another second),
/// so closing does not reset the connection and lose the answer.
async fn refuse(mut stream: TcpStream, why: &str) {
    let body =
        serde_json::json!({"code": "BACKPRESSURE", "message": why, "retryable": true}).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), read_head(&mut stream)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Read until the end of a request's head (an empty line), the peer's
/// end, or [`REFUSED_HEAD_MAX`] bytes, whichever comes first.
async fn read_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    // The head's last bytes so far, so an end split between reads is seen.
    let mut tail = Vec::with_capacity(buf.len() + 3);
    let mut read = 0;
    while read < REFUSED_HEAD_MAX {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        read += n;
        tail.extend_from_slice(&buf[..n]);
        if tail.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        tail.drain(..tail.len().saturating_sub(3));
    }
    Ok(())
}

/// The client's address, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What a connection's watchdog knows of it: requests in flight, and when
/// it last did something.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    mark: Mutex<Mark>,
}

#[derive(Default)]
struct Mark {
    /// Since when it has been waiting with no request in flight (`None`:
    /// since it was accepted).
    since: Option<Instant>,
    /// Whether it has been answered at least once.
    served: bool,
    /// When the first byte of the request being read arrived.
    reading: Option<Instant>,
}

impl Activity {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.mark.lock().reading = None;
    }

    fn end(&self) {
        let mut mark = self.mark.lock();
        mark.since = Some(Instant::now());
        mark.served = true;
        mark.reading = None;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut mark = self.mark.lock();
            if mark.reading.is_none() {
                mark.reading = Some(Instant::now());
            }
        }
    }

    fn wrote(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.mark.lock().since = Some(Instant::now());
        }
    }

    /// When the connection must be closed unless something happens first
    /// (`None` while a request is in flight).
    fn deadline(&self, accepted: Instant, header: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let mark = self.mark.lock();
        Some(match (mark.reading, mark.served) {
            (Some(first_byte), _) => first_byte + header,
            (None, false) => mark.since.unwrap_or(accepted) + header,
            (None, true) => mark.since.unwrap_or(accepted) + idle,
        })
    }
}

/// How [`serve`] times connections out.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `HERALD_HEADER_READ_TIMEOUT`.
    pub header_read: Duration,
    /// `HERALD_IDLE_TIMEOUT`.
    pub idle: Duration,
}

/// Serve `app` on every connection `listener` accepts until `shutdown` turns
/// true; then stop accepting, let each connection finish the request it is
/// on (closing it after), and return once all are done or `grace` passed.
pub async fn serve(
    mut listener: Listener,
    app: axum::Router,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some((conn, peer)) = accepted else { break };
        let (app, shutdown, done) = (app.clone(), shutdown.clone(), done_tx.clone());
        tokio::spawn(async move {
            serve_one(conn, peer, app, timeouts, shutdown).await;
            drop(done);
        });
    }
    drop(listener);
    drop(done_tx);
    if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
        tracing::warn!("requests still in flight after HERALD_SHUTDOWN_TIMEOUT; closing anyway");
    }
}

async fn serve_one(
    conn: Conn,
    peer: SocketAddr,
    app: axum::Router,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    let activity = conn.activity.clone();
    let on_request = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(Peer(peer)));
        on_request.begin();
        let (app, on_request) = (app.clone(), on_request.clone());
        async move {
            let response = app.oneshot(req.map(axum::body::Body::new)).await;
            on_request.end();
            response
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(conn), service)
        .with_upgrades();
    tokio::pin!(http);
    let mut closing = false;
    loop {
        let deadline = activity.deadline(accepted, timeouts.header_read, timeouts.idle);
        let wake = deadline.unwrap_or_else(|| Instant::now() + timeouts.header_read);
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now_due = activity
                    .deadline(accepted, timeouts.header_read, timeouts.idle)
                    .is_some_and(|d| d <= Instant::now());
                if now_due {
                    tracing::debug!(%peer, "closing a connection that sent no request in time");
                    return;
                }
            }
            _ = shutdown.wait_for(|s| *s), if !closing => {
                closing = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What an accepted connection holds while it lives: its places under the
/// connection limits.
struct Held {
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection; holds its places under the connection limits
/// and tells its watchdog when bytes move.
pub struct Conn {
    io: Io,
    activity: Arc<Activity>,
    _held: Held,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

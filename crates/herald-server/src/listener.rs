//! Accepting connections: the connection limit and TLS.
//!
//! Owns [`Listener`], the `axum::serve::Listener` the server runs on. A
//! task accepts TCP connections; each takes a permit of the connection
//! limit (`HERALD_MAX_CONNECTIONS`) for as long as it lives. A connection
//! over the limit gets a complete `503` response with a `BACKPRESSURE` body
//! and is closed, so a flood of connections costs the server a write each
//! and never a stall of the clients it already serves. With TLS configured,
//! handshakes run on their own tasks (10 s to finish), so a slow handshake
//! never holds up accepting.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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

/// Accepted connections under the limit, TLS already negotiated.
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
    /// Serve `tcp` with at most `max_connections` open at once.
    pub fn new(
        tcp: TcpListener,
        max_connections: usize,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(max_connections));
        let acceptor = tokio::spawn(accept_loop(tcp, permits, max_connections, tls, tx));
        Ok(Listener {
            accepted,
            local,
            acceptor,
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, max));
            continue;
        };
        match &tls {
            None => {
                let conn = Conn {
                    io: Io::Plain(stream),
                    _permit: permit,
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
                                _permit: permit,
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

/// Answer a connection over the limit and close it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        r#"{{"code":"BACKPRESSURE","message":"too many connections (HERALD_MAX_CONNECTIONS={max})","retryable":true}}"#
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The client's address, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop ended (the listener is being dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection; holds its place under the connection limit.
pub struct Conn {
    io: Io,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
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
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

//! A TCP proxy on loopback between herald and its store, owned by the
//! harness, so a run can break the network where it cannot touch the
//! machine's: added latency, every connection dropped, a blackhole (bytes
//! held, none passed, until it lifts) and half-open sockets (the store's
//! side closed, herald's left open and silent).
//!
//! Owns the proxy and its [`Mode`]. Which mode when is the run's schedule.
//! Written on tokio rather than taken from a crate: the faults need the
//! proxy's hands on each connection (hold, drop, half-close), which the
//! forwarding crates do not expose, and the whole of it is two pumps per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass them on at once.
    Pass,
    /// Hold each chunk this long before passing it on.
    Latency(Duration),
    /// Pass nothing and hold what arrives (new connections too, whose
    /// store side is not opened), as a network that drops packets does
    /// until it heals; then pass it all.
    Blackhole,
}

/// A running proxy: connections to [`addr`](Proxy::addr) go on to the
/// upstream address. Stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to drop every open connection.
    drops: watch::Sender<u64>,
    /// Bumped to half-open every open connection.
    half_opens: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_on(0, upstream).await
    }

    /// Listen on loopback port `port` (0: a free one), forwarding to
    /// `upstream`.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let (drops, _) = watch::channel(0);
        let (half_opens, _) = watch::channel(0);
        let links = Arc::new(Links {
            mode: mode.subscribe(),
            drops: drops.subscribe(),
            half_opens: half_opens.subscribe(),
        });
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let links = links.clone();
                tokio::spawn(async move { links.serve(client, upstream).await });
            }
        });
        Ok(Proxy {
            addr,
            mode,
            drops,
            half_opens,
            task,
        })
    }

    /// Where herald connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Set what the proxy does from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Close every open connection (both sides); new ones are served.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Close the store's side of every open connection and leave
    /// herald's open, reading what herald sends and answering nothing, as
    /// a peer that vanished without a FIN does; new ones are served.
    pub fn half_open(&self) {
        self.half_opens.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drops.send_modify(|n| *n += 1);
    }
}

/// What each connection watches.
struct Links {
    mode: watch::Receiver<Mode>,
    drops: watch::Receiver<u64>,
    half_opens: watch::Receiver<u64>,
}

impl Links {
    async fn serve(&self, client: TcpStream, upstream: SocketAddr) {
        let mut drops = self.drops.clone();
        let mut half_opens = self.half_opens.clone();
        drops.mark_unchanged();
        half_opens.mark_unchanged();
        // A blackhole holds a new connection before its store side opens.
        let mut mode = self.mode.clone();
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = server.set_nodelay(true);
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let half_open = tokio::select! {
            _ = drops.changed() => false,
            _ = half_opens.changed() => true,
            _ = pump(&mut client_read, &mut server_write, self.mode.clone()) => false,
            _ = pump(&mut server_read, &mut client_write, self.mode.clone()) => false,
        };
        if half_open {
            // The store's side goes; herald's stays open and answers
            // nothing until herald closes it or the proxy stops.
            drop((server_read, server_write));
            let mut sink = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = drops.changed() => break,
                    read = client_read.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { break },
                }
            }
            drop(client_write);
        }
    }
}

/// Pass bytes from `from` to `to` as `mode` says, until either side ends.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = *mode.borrow_and_update();
        match now {
            Mode::Pass => {}
            Mode::Latency(d) => tokio::time::sleep(d).await,
            Mode::Blackhole => {
                if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes what it reads and reports each connection's
    /// end.
    async fn echo() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ended, ends) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = ended.send(());
                });
            }
        });
        (addr, ends)
    }

    async fn round_trip(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        s.write_all(bytes).await.unwrap();
        let mut back = vec![0u8; bytes.len()];
        s.read_exact(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_blackhole_holds_them_until_it_lifts() {
        let (upstream, _) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        proxy.set(Mode::Latency(Duration::from_millis(5)));
        assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
        proxy.set(Mode::Blackhole);
        s.write_all(b"held").await.unwrap();
        // A connection opened in the blackhole is held too.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        proxy.set(Mode::Pass);
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held");
        late.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"late");
    }

    #[tokio::test]
    async fn dropped_connections_close_and_new_ones_are_served() {
        let (upstream, mut ends) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"one").await, b"one");
        proxy.drop_connections();
        let mut buf = [0u8; 8];
        assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)), "closed");
        ends.recv().await.expect("the store's side closed");
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"two").await, b"two");
    }

    #[tokio::test]
    async fn a_half_open_connection_closes_the_stores_side_only() {
        let (upstream, mut ends) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"one").await, b"one");
        proxy.half_open();
        ends.recv().await.expect("the store's side closed");
        // herald's side is still open: what it writes is taken, unanswered.
        s.write_all(b"anyone there?").await.unwrap();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"two").await, b"two");
        drop(proxy);
        let mut buf = [0u8; 8];
        assert!(
            matches!(s.read(&mut buf).await, Ok(0) | Err(_)),
            "closed with the proxy"
        );
    }
}

//! Connection slots against a real `herald serve`: sockets that send
//! nothing, half a request, or sit idle after one request are closed by the
//! server; one client address cannot hold more than its share; a
//! well-behaved client is served while an attacker holds sockets open; a
//! flood over the limit is answered, not stalled.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::Served;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `s` from loopback address `from` (127.0.0.x: another
/// client address on this machine).
async fn connect_from(s: &Served, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], s.port)))
        .await
        .unwrap()
}

/// Read until the server closes the connection (an error counts: a reset
/// is a close too); what was read. Fails the test after a minute.
async fn until_closed(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// One GET on a fresh connection from `from`: the status line.
async fn get_from(s: &Served, from: [u8; 4], path: &str) -> String {
    let mut c = connect_from(s, from).await;
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = until_closed(&mut c).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_and_idle_connections_are_closed() {
    let s = Served::start(&[
        ("HERALD_HEADER_READ_TIMEOUT", "1"),
        ("HERALD_IDLE_TIMEOUT", "2"),
    ])
    .await;
    let attacker = [127, 0, 0, 2];
    let mut silent = connect_from(&s, attacker).await;
    let mut half = connect_from(&s, attacker).await;
    half.write_all(b"GET /v1/topics HT").await.unwrap();
    let mut idle = connect_from(&s, attacker).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut dripping = connect_from(&s, attacker).await;
    dripping
        .write_all(b"POST /v1/topics/a.b/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut silent).await, "", "closed unanswered");
    assert_eq!(until_closed(&mut half).await, "", "closed unanswered");
    let answered = until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let dripped = until_closed(&mut dripping).await;
    assert!(
        dripped.starts_with("HTTP/1.1 400"),
        "a body that stops is refused: {dripped}"
    );
    // Nothing of the half-sent body was published.
    let (_, page) = support::get(&s.url("/v1/topics/a.b/events")).await;
    assert_eq!(page["events"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_slot() {
    let s = Served::start(&[
        ("HERALD_MAX_CONNECTIONS", "50"),
        ("HERALD_MAX_CONNECTIONS_PER_CLIENT", "8"),
        ("HERALD_HEADER_READ_TIMEOUT", "300"),
    ])
    .await;
    let attacker = [127, 0, 0, 2];
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from(&s, attacker).await);
    }
    // The attacker's ninth is refused at once, with the reason.
    let refused = get_from(&s, attacker, "/healthz").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Another client is served all the while.
    for _ in 0..5 {
        let served = get_from(&s, [127, 0, 0, 1], "/readyz").await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_held_by_silent_sockets_come_back() {
    let s = Served::start(&[
        ("HERALD_MAX_CONNECTIONS", "16"),
        ("HERALD_HEADER_READ_TIMEOUT", "1"),
    ])
    .await;
    // Sixteen silent sockets from sixteen addresses fill every slot.
    let mut held = Vec::new();
    for i in 0..16u8 {
        held.push(connect_from(&s, [127, 0, 1, i + 1]).await);
    }
    // They are closed for sending nothing, so a client gets in again
    // while the attacker still holds its ends open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = get_from(&s, [127, 0, 0, 1], "/readyz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every one of them is closed (one may have been refused at once, if
    // the start-up probe's connection still held a slot then).
    for c in &mut held {
        until_closed(c).await;
    }
}

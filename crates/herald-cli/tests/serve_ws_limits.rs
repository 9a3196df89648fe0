//! What one WebSocket may cost a real `herald serve`, and the order of
//! what it sends: outgoing frames are bounded in bytes and the memory goes
//! back when the socket goes; pending calls are bounded and cancelled with
//! their connection; publishes are stored in the order sent; refusals name
//! the frame they refuse; broken frames get their close codes.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{get, post, Served, Ws};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_costs_bounded_memory_and_gives_it_back() {
    let s = Served::start(&[
        ("HERALD_MAX_PAYLOAD_BYTES", "1048576"),
        ("HERALD_MAX_REQUEST_BYTES", "67108864"),
        ("HERALD_WS_BUFFER_BYTES", "4194304"),
        ("HERALD_WS_STALL_TIMEOUT", "2"),
    ])
    .await;
    // 200 events of 1 MiB each, stored before anyone subscribes.
    let big = "x".repeat(MIB - 16);
    for _ in 0..20 {
        let batch: Vec<Value> = (0..10).map(|_| json!({"payload": big})).collect();
        let (status, body) = post(&s.url("/v1/topics/big.blob/events"), &json!(batch)).await;
        assert_eq!(status, 201, "{body}");
    }
    let before = s.rss();
    // A subscriber that never reads: it asks for everything and stops. Its
    // receive buffer is small, so the server's writes block soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], s.port)))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(s.ws_url(None), tcp)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "id": "all", "pattern": "big.>", "start": "earliest", "max_in_flight": 200})
            .to_string(),
    ))
    .await
    .unwrap();
    // The server gives up on it (nothing read for HERALD_WS_STALL_TIMEOUT),
    // which a reader sees as the end of the stream, once it reads again.
    let mut peak = before;
    let log_has_stall = || s.log().contains("stalled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !log_has_stall() {
        peak = peak.max(s.rss());
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dropped:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
    // Bounded: the queue (4 MiB) and the unacked deliveries (4 MiB) plus
    // what is being encoded and sent, far from the 200 MiB it was offered.
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * MIB as u64,
        "grew by {} MiB",
        grown / MIB as u64
    );
    // And it comes back once the socket is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = s.rss();
        if now < before + 16 * MIB as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} MiB above the start",
            (now - before) / MIB as u64
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_are_bounded_and_cancelled_with_their_connection() {
    let s = Served::start(&[("HERALD_WS_MAX_PENDING_CALLS", "10")]).await;
    let mut handler = Ws::connect(&s.ws_url(None)).await;
    handler
        .send(json!({"op": "handle", "topic": "slow.op"}))
        .await;
    assert_eq!(handler.recv().await["op"], "handling");
    let mut caller = Ws::connect(&s.ws_url(None)).await;
    for n in 0..15 {
        caller
            .send(
                json!({"op": "call", "ref": format!("c{n}"), "topic": "slow.op",
                         "message": {"payload": n}, "timeout_ms": 300000}),
            )
            .await;
    }
    // Ten reach the handler; five are refused, each by its ref.
    let mut refused = Vec::new();
    while refused.len() < 5 {
        let f = caller.recv_op("error").await;
        assert_eq!(
            (f["code"].as_str(), f["retryable"].as_bool()),
            (Some("BACKPRESSURE"), Some(true)),
            "{f}"
        );
        refused.push(f["ref"].as_str().unwrap().to_owned());
    }
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(handler.recv_op("command").await["call"].clone());
    }
    // The caller goes away: its calls are cancelled, so the handler's
    // replies find nobody waiting.
    caller.close_and_wait().await;
    for call in calls {
        handler
            .send(json!({"op": "reply", "call": call, "payload": "late"}))
            .await;
        let f = handler.recv_op("error").await;
        assert_eq!(
            (f["code"].as_str(), f["ref"].clone()),
            (Some("NOT_FOUND"), json!(call.to_string())),
            "{f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_one_socket_are_stored_in_the_order_sent() {
    let s = Served::start(&[]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    for n in 0..300 {
        ws.send(
            json!({"op": "publish", "ref": n.to_string(), "topic": "seq.check",
                       "messages": [{"payload": n, "key": "one"}]}),
        )
        .await;
    }
    for _ in 0..300 {
        assert_eq!(ws.recv_op("published").await["op"], "published");
    }
    let (_, page) = get(&s.url("/v1/topics/seq.check/events?limit=1000")).await;
    let stored: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, (0..300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_frame_is_named_by_its_ref() {
    let s = Served::start(&[("HERALD_RATE_LIMIT", "1")]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    for n in 0..5 {
        ws.send(
            json!({"op": "publish", "ref": format!("p{n}"), "topic": "rate.x",
                       "messages": [{"payload": n}]}),
        )
        .await;
    }
    let mut answered = Vec::new();
    for _ in 0..5 {
        let f = ws.recv().await;
        answered.push(f["ref"].as_str().map(str::to_owned));
        if f["op"] == "error" {
            assert_eq!(f["code"], "BACKPRESSURE", "{f}");
        }
    }
    answered.sort();
    let want: Vec<Option<String>> = (0..5).map(|n| Some(format!("p{n}"))).collect();
    assert_eq!(answered, want, "every frame is answered by its ref");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_are_not_retryable() {
    let s = Served::start(&[("HERALD_MAX_PAYLOAD_BYTES", "1024")]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.send(json!({"op": "publish", "ref": "big", "topic": "a.b",
                   "messages": [{"payload": "x".repeat(2000)}]}))
        .await;
    let f = ws.recv().await;
    assert_eq!(
        (
            f["code"].as_str(),
            f["ref"].as_str(),
            f["retryable"].as_bool()
        ),
        (Some("BACKPRESSURE"), Some("big"), Some(false)),
        "{f}"
    );
}

/// The close code the server ends a connection with after `frame`.
async fn close_code_after(s: &Served, frame: Message) -> u16 {
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url(None))
        .await
        .unwrap();
    ws.send(frame).await.unwrap();
    close_code(&mut ws).await
}

/// The code of the close frame the server sends next.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> u16 {
    loop {
        let msg = tokio::time::timeout(support::WAIT, ws.next())
            .await
            .expect("an answer in time");
        match msg {
            Some(Ok(Message::Close(Some(c)))) => return c.code.into(),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_get_their_close_codes() {
    let s = Served::start(&[("HERALD_MAX_REQUEST_BYTES", "65536")]).await;
    let invalid = Frame::message(
        b"{\"op\": \"\xff\xfe\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    assert_eq!(close_code_after(&s, Message::Frame(invalid)).await, 1007);
    // A message over the limit, sent as two fragments under it, so the
    // server has read all of it when it closes (a frame over the limit is
    // refused from its header, and closing on its unread rest may reset the
    // connection before the close frame is read).
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url(None))
        .await
        .unwrap();
    let part = |op, fin| Frame::message(vec![b' '; 40_000], op, fin);
    ws.send(Message::Frame(part(OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    ws.send(Message::Frame(part(OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    // The server is fine afterwards.
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe("ok", "a.>", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_answers_no_ping_is_closed_and_frees_its_slot() {
    let s = Served::start(&[
        ("HERALD_IDLE_TIMEOUT", "2"),
        ("HERALD_MAX_CONNECTIONS", "2"),
    ])
    .await;
    // A client that never reads never answers the server's pings. (The
    // start-up probe's connection may hold a slot for a moment: a connect
    // refused then is tried again.)
    let connect = || async {
        loop {
            match tokio_tungstenite::connect_async(s.ws_url(None)).await {
                Ok((ws, _)) => return ws,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    let _silent = connect().await;
    // One that reads answers them (tungstenite pongs as it reads) and stays.
    let mut live = Ws::from_stream(connect().await);
    live.subscribe("t", "idle.>", json!({})).await;
    // It reads (and so pongs) until the event comes.
    let reader = tokio::spawn(async move { live.recv_op("event").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !s.log().contains("silent for") {
        assert!(tokio::time::Instant::now() < deadline, "{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The silent one's slot is free again: a third client gets in and
    // publishes. Until the server has let the slot go, it refuses the
    // connection with a 503 (the request unread, nothing stored), so only
    // that answer is tried again.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = support::send(
            client
                .post(s.url("/v1/topics/idle.x/events"))
                .json(&json!({"payload": 1})),
        )
        .await;
        if status == 503 && body["code"] == "BACKPRESSURE" {
            assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(status, 201, "{body}");
        break;
    }
    let event = reader.await.unwrap();
    assert_eq!(event["envelope"]["payload"], 1);
    assert_eq!(
        s.log().matches("silent for").count(),
        1,
        "only the silent one went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_delays_and_handlers_are_bounded() {
    let s = Served::start(&[("HERALD_MAX_SUBSCRIPTIONS", "2")]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    let long = "x".repeat(2000);
    for frame in [
        json!({"op": "subscribe", "id": long, "pattern": "a.>"}),
        json!({"op": "subscribe", "id": "bell\u{7}", "pattern": "a.>"}),
        json!({"op": "publish", "ref": long, "topic": "a.b", "messages": [{"payload": 1}]}),
        json!({"op": "term", "delivery": 1, "reason": long}),
    ] {
        ws.send(frame.clone()).await;
        let f = ws.recv_op("error").await;
        assert_eq!(f["code"], "VALIDATION", "{frame}: {f}");
        assert!(f["message"].as_str().unwrap().len() < 600, "{f}");
    }
    ws.subscribe("s", "a.>", json!({"start": "earliest"})).await;
    let (status, _) = post(&s.url("/v1/topics/a.b/events"), &json!({"payload": 1})).await;
    assert_eq!(status, 201);
    let e = ws.recv_op("event").await;
    ws.send(json!({"op": "nack", "delivery": e["delivery"], "delay_ms": 86_400_000u64}))
        .await;
    let f = ws.recv_op("error").await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].clone()),
        (Some("VALIDATION"), json!(e["delivery"].to_string())),
        "{f}"
    );
    for topic in ["h.one", "h.two"] {
        ws.send(json!({"op": "handle", "topic": topic})).await;
        assert_eq!(ws.recv_op("handling").await["topic"], topic);
    }
    ws.send(json!({"op": "handle", "topic": "h.three"})).await;
    let f = ws.recv_op("error").await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("BACKPRESSURE"), Some("h.three")),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_far_ahead_reads_nothing_it_does_not_need() {
    // A group-less subscription positioned past everything stored, and one
    // on a pattern nothing matches, get only what is published after.
    let s = Served::start(&[]).await;
    let batch: Vec<Value> = (0..500).map(|n| json!({"payload": n})).collect();
    let (status, _) = post(&s.url("/v1/topics/busy.x/events"), &json!(batch)).await;
    assert_eq!(status, 201);
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe("far", "busy.>", json!({"start": {"seq": 10_000}}))
        .await;
    ws.subscribe("none", "quiet.>", json!({"start": "earliest"}))
        .await;
    ws.subscribe("from", "busy.>", json!({"start": {"seq": 499}}))
        .await;
    let from: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let f = ws.recv_op("event").await;
            assert_eq!(f["sub"], "from", "{f}");
            v.push(f["envelope"]["seq"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(from, [499, 500]);
    let (status, _) = post(
        &s.url("/v1/topics/quiet.y/events"),
        &json!({"payload": "q"}),
    )
    .await;
    assert_eq!(status, 201);
    let f = ws.recv_op("event").await;
    assert_eq!(
        (f["sub"].as_str(), f["envelope"]["payload"].as_str()),
        (Some("none"), Some("q")),
        "{f}"
    );
}

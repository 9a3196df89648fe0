//! `herald serve`'s WebSocket, as a real process: durable subscriptions
//! resume across a disconnect with nothing lost and in order, nacks
//! redeliver, a slow client never stalls another, and publish and call work
//! on the same connection.

mod support;

use serde_json::json;
use support::{get, post, Served, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_resumes_after_a_disconnect_losing_nothing() {
    let s = Served::start(&[]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "s",
        "jobs.>",
        json!({"group": "workers", "start": "earliest", "max_in_flight": 5}),
    )
    .await;
    // One key: the group hands its events out one at a time, in order.
    let batch: Vec<_> = (1..=20)
        .map(|n| json!({"payload": n, "key": "line-1"}))
        .collect();
    let (status, _) = post(&s.url("/v1/topics/jobs.new/events"), &json!(batch)).await;
    assert_eq!(status, 201);

    // Ack the first 7, receive the 8th without acking it, then vanish.
    let mut acked = Vec::new();
    for _ in 0..7 {
        let ev = ws.recv_op("event").await;
        acked.push(ev["envelope"]["payload"].as_u64().unwrap());
        ws.send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
        ws.recv_op("settled").await;
    }
    assert_eq!(acked, (1..=7).collect::<Vec<_>>());
    let unacked = ws.recv_op("event").await;
    assert_eq!(unacked["envelope"]["payload"], 8);
    drop(ws);

    // The same durable subscription again: everything not acked, in order.
    let mut again = Ws::connect(&s.ws_url(None)).await;
    again
        .subscribe("s", "jobs.>", json!({"group": "workers"}))
        .await;
    let mut rest = Vec::new();
    for _ in 8..=20 {
        let ev = again.recv_op("event").await;
        rest.push(ev["envelope"]["payload"].as_u64().unwrap());
        if ev["envelope"]["payload"] == 8 {
            assert_eq!(ev["envelope"]["attempt"], 2, "a redelivery says so");
        }
        again
            .send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
    }
    assert_eq!(rest, (8..=20).collect::<Vec<_>>(), "none lost, in order");
    let (_, groups) = get(&s.url("/v1/groups")).await;
    let workers = &groups["groups"][0];
    assert_eq!(workers["name"], "workers");
    // Acks are confirmed asynchronously; the last ones may still be landing.
    assert!(workers["topics"][0]["acked_through"].as_u64().unwrap() >= 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_redelivers_and_settling_twice_is_an_error() {
    let s = Served::start(&[]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe("s", "mail.send", json!({"group": "mailer"}))
        .await;
    ws.send(json!({"op": "publish", "ref": "p1", "topic": "mail.send", "messages": [{"payload": "hi"}]})).await;
    let published = ws.recv_op("published").await;
    assert_eq!(published["ref"], "p1");
    assert_eq!(published["events"][0]["seq"], 1);
    let first = ws.recv_op("event").await;
    ws.send(json!({"op": "nack", "delivery": first["delivery"], "delay_ms": 10}))
        .await;
    ws.recv_op("settled").await;
    let second = ws.recv_op("event").await;
    assert_eq!(second["envelope"]["id"], first["envelope"]["id"]);
    assert_eq!(second["envelope"]["attempt"], 2);
    ws.send(json!({"op": "ack", "delivery": second["delivery"]}))
        .await;
    ws.recv_op("settled").await;
    ws.send(json!({"op": "ack", "delivery": second["delivery"]}))
        .await;
    let err = ws.recv_op("error").await;
    assert_eq!(err["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_never_stalls_another() {
    let s = Served::start(&[("HERALD_WS_BUFFER", "4")]).await;
    // The slow client subscribes and then never reads.
    let mut slow = Ws::connect(&s.ws_url(None)).await;
    slow.subscribe("s", "feed.>", json!({"auto_ack": true}))
        .await;
    let mut fast = Ws::connect(&s.ws_url(None)).await;
    fast.subscribe("f", "feed.>", json!({"auto_ack": true}))
        .await;
    let payload = "x".repeat(16 * 1024);
    for chunk in 0..10 {
        let batch: Vec<_> = (0..50)
            .map(|i| json!({"payload": {"n": chunk * 50 + i, "pad": payload}}))
            .collect();
        let (status, body) = post(&s.url("/v1/topics/feed.items/events"), &json!(batch)).await;
        assert_eq!(status, 201, "{body}");
    }
    for n in 0..500u64 {
        let ev = fast.recv_op("event").await;
        assert_eq!(
            ev["envelope"]["payload"]["n"], n,
            "the fast client gets everything in order"
        );
    }
    // The server still answers everyone else.
    let (status, _) = get(&s.url("/readyz")).await;
    assert_eq!(status, 200);
    drop(slow);
}

/// A group member that unsubscribes, or whose connection goes, hands back
/// at once what it took: the deliveries it did not ack and the events its
/// subscription claimed but had not sent (leases of an hour here, so an
/// event left behind would not come back within the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_goes_hands_back_everything_it_took() {
    const N: u64 = 20;
    let s = Served::start(&[("HERALD_ACK_WAIT", "3600")]).await;
    let member = json!({"group": "workers", "start": "earliest", "max_in_flight": 1});
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe("s", "jobs.>", member.clone()).await;
    let batch: Vec<_> = (1..=N).map(|n| json!({"payload": n})).collect();
    let (status, _) = post(&s.url("/v1/topics/jobs.new/events"), &json!(batch)).await;
    assert_eq!(status, 201);
    let first = ws.recv_op("event").await;
    ws.send(json!({"op": "unsubscribe", "id": "s"})).await;
    assert_eq!(ws.recv_op("unsubscribed").await["id"], "s");

    // The next member takes one and its connection goes.
    ws.subscribe("t", "jobs.>", member.clone()).await;
    let second = ws.recv_op("event").await;
    ws.close_and_wait().await;

    let mut last = Ws::connect(&s.ws_url(None)).await;
    last.subscribe("u", "jobs.>", member).await;
    let mut got = std::collections::BTreeMap::new();
    for _ in 1..=N {
        let ev = last.recv_op("event").await;
        let n = ev["envelope"]["payload"].as_u64().unwrap();
        assert!(
            got.insert(n, ev["envelope"]["attempt"].clone()).is_none(),
            "{n} twice"
        );
        last.send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
    }
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>()
    );
    // Each delivery a member was sent counts as an attempt.
    let mut sent = std::collections::BTreeMap::new();
    for e in [&first, &second] {
        *sent
            .entry(e["envelope"]["payload"].as_u64().unwrap())
            .or_insert(1) += 1;
    }
    for (n, attempt) in sent {
        assert_eq!(got[&n], attempt, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_checked_and_limits_hold() {
    let s = Served::start(&[("HERALD_MAX_SUBSCRIPTIONS", "2")]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.send_text("{not json").await;
    assert_eq!(ws.recv().await["code"], "VALIDATION");
    ws.send(json!({"op": "subscribe", "id": "a", "pattern": "a.b", "bogus": 1}))
        .await;
    assert_eq!(ws.recv().await["code"], "VALIDATION");
    ws.send(json!({"op": "fly"})).await;
    assert_eq!(ws.recv().await["code"], "VALIDATION");
    ws.send(json!({"op": "subscribe", "id": "a", "pattern": "Not A Pattern"}))
        .await;
    let e = ws.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("VALIDATION"), Some("a"))
    );
    ws.subscribe("a", "a.*", json!({})).await;
    ws.send(json!({"op": "subscribe", "id": "a", "pattern": "b.*"}))
        .await;
    assert_eq!(ws.recv().await["code"], "VALIDATION", "ids are unique");
    ws.subscribe("b", "b.*", json!({})).await;
    ws.send(json!({"op": "subscribe", "id": "c", "pattern": "c.*"}))
        .await;
    assert_eq!(
        ws.recv().await["code"],
        "BACKPRESSURE",
        "HERALD_MAX_SUBSCRIPTIONS"
    );
    ws.send(json!({"op": "unsubscribe", "id": "b"})).await;
    assert_eq!(ws.recv().await["op"], "unsubscribed");
    ws.subscribe("c", "c.*", json!({})).await;
    ws.send(json!({"op": "call", "ref": "c1", "topic": "nobody.home", "message": {"payload": 1}, "timeout_ms": 500})).await;
    let e = ws.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("NOT_FOUND"), Some("c1"))
    );
    // The connection still works after every refusal.
    ws.send(json!({"op": "publish", "topic": "c.d", "messages": [{"payload": 1}]}))
        .await;
    assert_eq!(ws.recv_op("published").await["events"][0]["seq"], 1);
    let ev = ws.recv_op("event").await;
    assert_eq!(ev["envelope"]["topic"], "c.d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_its_durable_events_go_to_another() {
    // A 5 s ack wait: an event the dropped member was claiming at that very
    // moment is leased to nobody and comes back when its lease runs out.
    let s = Served::start(&[
        ("HERALD_WS_BUFFER", "2"),
        ("HERALD_WS_STALL_TIMEOUT", "1"),
        ("HERALD_ACK_WAIT", "5"),
    ])
    .await;
    // The stalled member takes deliveries and never reads its socket.
    let mut stalled = Ws::connect(&s.ws_url(None)).await;
    let options = json!({"group": "bulk", "start": "earliest", "max_in_flight": 10000});
    stalled.subscribe("s", "bulk.items", options).await;
    // 80 MB: far more than the socket buffers between server and client
    // hold, so the server's writes to the stalled client block.
    let pad = "x".repeat(200 * 1024);
    let total = 400u64;
    for chunk in 0..(total / 10) {
        let batch: Vec<_> = (0..10)
            .map(|i| json!({"payload": {"n": chunk * 10 + i, "pad": pad}}))
            .collect();
        let (status, body) = post(&s.url("/v1/topics/bulk.items/events"), &json!(batch)).await;
        assert_eq!(status, 201, "{body}");
    }
    // The server gives up on it after HERALD_WS_STALL_TIMEOUT.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.log().contains("stalled") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dropped:\n{}",
            s.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Another member of the group gets every event, those the stalled one
    // held among them.
    let mut healthy = Ws::connect(&s.ws_url(None)).await;
    healthy
        .subscribe("h", "bulk.items", json!({"group": "bulk"}))
        .await;
    let mut got = std::collections::BTreeSet::new();
    while (got.len() as u64) < total {
        let ev = healthy.recv_op("event").await;
        got.insert(ev["envelope"]["payload"]["n"].as_u64().unwrap());
        healthy
            .send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
    }
    assert_eq!(got, (0..total).collect(), "none lost");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_is_not_rate_limited() {
    let s = Served::start(&[("HERALD_RATE_LIMIT", "5")]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "s",
        "fast.items",
        json!({"group": "fast", "start": "earliest"}),
    )
    .await;
    let batch: Vec<_> = (0..40).map(|n| json!({"payload": n})).collect();
    let (status, _) = post(&s.url("/v1/topics/fast.items/events"), &json!(batch)).await;
    assert_eq!(status, 201);
    for _ in 0..40 {
        let ev = ws.recv_op("event").await;
        ws.send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
    }
    for _ in 0..40 {
        let f = ws.recv_op("settled").await;
        assert!(f["delivery"].as_u64().is_some());
    }
    // Requests still count: a burst of publishes over the limit is refused.
    for _ in 0..20 {
        ws.send(json!({"op": "publish", "topic": "fast.items", "messages": [{"payload": 1}]}))
            .await;
    }
    let err = ws.recv_op("error").await;
    assert_eq!(err["code"], "BACKPRESSURE");
}

/// A group ordered per topic over WebSocket: a session topic's keyless
/// events come one at a time, each after the one before is acked, while
/// other sessions' come at once; a member asking the group for per-key
/// order, an unknown ordering and an ordering without a group are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_ordered_per_topic_hands_out_a_sessions_events_in_turn() {
    let s = Served::start(&[]).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    let options = json!({"group": "transcripts", "ordering": "per_topic", "start": "earliest", "max_in_flight": 10});
    ws.subscribe("s", "chat.session.*", options).await;
    for (session, n) in [(1, 1), (1, 2), (1, 3), (2, 1)] {
        let url = s.url(&format!("/v1/topics/chat.session.{session}/events"));
        let (status, body) = post(&url, &json!({"payload": n})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = post(
        &s.url("/v1/topics/chat.session.3/events"),
        &json!({"payload": 1}),
    )
    .await;
    assert_eq!(status, 201);
    // Session 3's event, published last, comes before session 1's second.
    let mut got = Vec::new();
    let mut first = None;
    while got.len() < 3 {
        let ev = ws.recv_op("event").await;
        let topic = ev["envelope"]["topic"].as_str().unwrap().to_owned();
        let n = ev["envelope"]["payload"].as_u64().unwrap();
        if topic == "chat.session.1" {
            first = Some(ev["delivery"].clone());
        }
        got.push((topic, n));
    }
    got.sort();
    let expected: Vec<(String, u64)> = (1..=3).map(|s| (format!("chat.session.{s}"), 1)).collect();
    assert_eq!(got, expected, "one event per session until it is acked");
    ws.send(json!({"op": "ack", "delivery": first.unwrap()}))
        .await;
    let next = ws.recv_op("event").await;
    assert_eq!(
        (
            next["envelope"]["topic"].as_str(),
            next["envelope"]["payload"].as_u64()
        ),
        (Some("chat.session.1"), Some(2)),
        "the session's next, once its first is acked"
    );

    let mut other = Ws::connect(&s.ws_url(None)).await;
    for (options, why) in [
        (
            json!({"group": "transcripts"}),
            "the group orders per topic",
        ),
        (
            json!({"group": "g", "ordering": "sideways"}),
            "an unknown ordering",
        ),
        (
            json!({"ordering": "per_topic"}),
            "an ordering without a group",
        ),
    ] {
        let mut frame = json!({"op": "subscribe", "id": "o", "pattern": "chat.session.*"});
        frame
            .as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        other.send(frame).await;
        let e = other.recv_op("error").await;
        assert_eq!(e["code"], "VALIDATION", "{why}: {e}");
    }
}

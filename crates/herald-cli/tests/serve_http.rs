//! `herald serve` over HTTP, as a real process on its embedded SQLite
//! store: publish, replay, topics, groups, calls, dead letters, health,
//! metrics — every answer checked against the server's own OpenAPI document.

mod support;

use serde_json::{json, Value};
use support::{get, openapi_check, post, send, Served, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_does_what_its_document_says() {
    let s = Served::start(&[]).await;
    let (status, doc) = get(&s.url("/openapi.json")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let check = |method: &str, path: &str, status: u16, body: &Value| {
        openapi_check(&doc, method, path, status, body)
    };

    // Publish one, then a batch: seqs continue, ids are returned.
    let (status, one) = post(
        &s.url("/v1/topics/orders.placed/events"),
        &json!({"payload": {"order": 1}, "key": "c-1", "headers": {"x-src": "test"}}),
    )
    .await;
    assert_eq!(status, 201, "{one}");
    check("post", "/v1/topics/{topic}/events", 201, &one);
    assert_eq!(one["events"][0]["seq"], 1);
    let batch: Vec<Value> = (2..=5).map(|n| json!({"payload": {"order": n}})).collect();
    let (status, many) = post(&s.url("/v1/topics/orders.placed/events"), &json!(batch)).await;
    assert_eq!(status, 201, "{many}");
    let seqs: Vec<u64> = many["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5]);

    // Replay in pages of two.
    let mut from = 1;
    let mut orders = Vec::new();
    loop {
        let (status, page) = get(&s.url(&format!(
            "/v1/topics/orders.placed/events?from_seq={from}&limit=2"
        )))
        .await;
        assert_eq!(status, 200, "{page}");
        check("get", "/v1/topics/{topic}/events", 200, &page);
        for e in page["events"].as_array().unwrap() {
            orders.push(e["payload"]["order"].as_u64().unwrap());
        }
        match page["next_seq"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(orders, [1, 2, 3, 4, 5]);
    let (_, first) = get(&s.url("/v1/topics/orders.placed/events?limit=1")).await;
    assert_eq!(first["events"][0]["key"], "c-1");
    assert_eq!(first["events"][0]["headers"]["x-src"], "test");
    assert_eq!(
        first["events"][0]["id"], one["events"][0]["id"],
        "the id the publish answered with is the stored event's"
    );

    // Topics, with last seq.
    let (status, topics) = get(&s.url("/v1/topics")).await;
    assert_eq!(status, 200);
    check("get", "/v1/topics", 200, &topics);
    assert_eq!(topics["topics"][0]["topic"], "orders.placed");
    assert_eq!(topics["topics"][0]["last_seq"], 5);

    // A WebSocket group that takes two and terms the third: the group's
    // lag shows, and the termed event becomes a dead letter.
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "billing",
        "orders.*",
        json!({"group": "billing", "start": "earliest", "max_in_flight": 1}),
    )
    .await;
    for _ in 0..2 {
        let ev = ws.recv_op("event").await;
        ws.send(json!({"op": "ack", "delivery": ev["delivery"]}))
            .await;
        ws.recv_op("settled").await;
    }
    let third = ws.recv_op("event").await;
    assert_eq!(third["envelope"]["seq"], 3);
    ws.send(json!({"op": "term", "delivery": third["delivery"], "reason": "bad order"}))
        .await;
    ws.recv_op("settled").await;
    let (status, groups) = get(&s.url("/v1/groups")).await;
    assert_eq!(status, 200);
    check("get", "/v1/groups", 200, &groups);
    let billing = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "billing")
        .expect("listed");
    assert_eq!(billing["patterns"], json!(["orders.*"]));
    let members = billing["members"].as_array().expect("its members here");
    assert_eq!(members.len(), 1, "{billing}");
    assert_eq!(members[0]["state"], "running", "{billing}");
    assert_eq!(billing["topics"][0]["acked_through"], 3, "{billing}");
    assert!(billing["lag"].as_u64().unwrap() <= 2, "{billing}");

    let (status, dead) = get(&s.url("/v1/dead-letters?topic=orders.*")).await;
    assert_eq!(status, 200);
    check("get", "/v1/dead-letters", 200, &dead);
    let letter = &dead["dead_letters"][0];
    assert_eq!(letter["seq"], 3);
    assert_eq!(letter["group"], "billing");
    assert_eq!(letter["reason"], "bad order");
    assert_eq!(
        letter["source"], "gateway",
        "a client's term through the gateway"
    );
    let id = letter["id"].as_u64().unwrap();
    let (status, shown) = get(&s.url(&format!("/v1/dead-letters/{id}"))).await;
    assert_eq!(status, 200);
    check("get", "/v1/dead-letters/{id}", 200, &shown);
    assert_eq!(shown["envelope"]["payload"]["order"], 3);
    let (status, replayed) =
        send(json_post(&s.url(&format!("/v1/dead-letters/{id}/replay")))).await;
    assert_eq!(status, 200, "{replayed}");
    check("post", "/v1/dead-letters/{id}/replay", 200, &replayed);
    assert_eq!(replayed["seqs"], json!([6]));
    let (status, gone) = get(&s.url(&format!("/v1/dead-letters/{id}"))).await;
    assert_eq!(status, 404);
    check("get", "/v1/dead-letters/{id}", 404, &gone);
    assert_eq!(gone["code"], "NOT_FOUND");
    let (status, purged) = send(json_post(&s.url("/v1/dead-letters/purge"))).await;
    assert_eq!(status, 200);
    check("post", "/v1/dead-letters/purge", 200, &purged);

    // A command handled by a WebSocket client, called over HTTP.
    let mut handler = Ws::connect(&s.ws_url(None)).await;
    handler
        .send(json!({"op": "handle", "topic": "math.double"}))
        .await;
    assert_eq!(handler.recv().await["op"], "handling");
    let answer = tokio::spawn(async move {
        let cmd = handler.recv_op("command").await;
        let n = cmd["envelope"]["payload"].as_u64().unwrap();
        handler
            .send(json!({"op": "reply", "call": cmd["call"], "payload": n * 2}))
            .await;
        handler
    });
    let (status, response) =
        post(&s.url("/v1/commands/math.double"), &json!({"payload": 21})).await;
    assert_eq!(status, 200, "{response}");
    check("post", "/v1/commands/{topic}", 200, &response);
    assert_eq!(response["payload"], 42);
    assert_eq!(response["kind"], "response");
    drop(answer.await.unwrap());
    let (status, missing) = post(&s.url("/v1/commands/math.halve"), &json!({"payload": 2})).await;
    assert_eq!(status, 404);
    check("post", "/v1/commands/{topic}", 404, &missing);

    // Operations.
    let (status, health) = get(&s.url("/healthz")).await;
    assert_eq!((status, health["store"].as_str()), (200, Some("sqlite")));
    check("get", "/healthz", 200, &health);
    let (status, ready) = get(&s.url("/readyz")).await;
    assert_eq!(status, 200);
    check("get", "/readyz", 200, &ready);
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("herald_publish_seconds_count"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_go_in_and_come_out() {
    let s = Served::start(&[]).await;
    let c = reqwest::Client::new();
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "ce",
        "shop.*",
        json!({"format": "cloudevents", "auto_ack": true}),
    )
    .await;
    let ce = json!({
        "specversion": "1.0", "id": "order-1", "source": "/shop/web", "type": "shop.ordered",
        "datacontenttype": "application/json", "data": {"sku": "A-1"}, "key": "cust-7",
    });
    let post_ce = |body: &Value, ct: &str| {
        c.post(s.url("/v1/topics/shop.ordered/events"))
            .header("content-type", ct)
            .body(body.to_string())
    };
    let (status, body) = send(post_ce(&ce, "application/cloudevents+json")).await;
    assert_eq!(status, 201, "{body}");
    // source + id is the idempotency key: the same CloudEvent again is a duplicate.
    let (_, again) = send(post_ce(&ce, "application/cloudevents+json")).await;
    assert_eq!(again["events"][0]["seq"], 1, "deduplicated: {again}");
    let mut second = ce.clone();
    second["id"] = json!("order-2");
    let (status, _) = send(post_ce(
        &json!([second]),
        "application/cloudevents-batch+json",
    ))
    .await;
    assert_eq!(status, 201);
    let mut wrong = ce.clone();
    wrong["type"] = json!("shop.refunded");
    let (status, body) = send(post_ce(&wrong, "application/cloudevents+json")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION")));

    let frame = ws.recv_op("event").await;
    let got = &frame["cloudevent"];
    assert_eq!(
        (got["type"].as_str(), got["source"].as_str()),
        (Some("shop.ordered"), Some("/shop/web"))
    );
    assert_eq!(got["data"], json!({"sku": "A-1"}));
    assert_eq!(got["seq"], 1);
    assert_eq!(got["key"], "cust-7");
    assert_eq!(got["specversion"], "1.0");

    let r = c
        .get(s.url("/v1/topics/shop.ordered/events?limit=1"))
        .header("accept", "application/cloudevents-batch+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/cloudevents-batch+json"
    );
    assert_eq!(r.headers()["herald-next-seq"], "2");
    let list: Value = r.json().await.unwrap();
    assert_eq!(
        list[0]["id"].as_str().map(str::len),
        Some(36),
        "herald's own event id"
    );
    assert_eq!(list[0]["idempotencykey"], "/shop/web/order-1");
}

/// A POST without a body, saying JSON as every POST must.
fn json_post(url: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_page_of_large_events_ends_early_and_says_where_to_go_on() {
    let s = Served::start(&[
        ("HERALD_MAX_PAYLOAD_BYTES", "4194304"),
        ("HERALD_MAX_REQUEST_BYTES", "67108864"),
    ])
    .await;
    let big = "x".repeat(4 * 1024 * 1024 - 16);
    for _ in 0..3 {
        let batch: Vec<Value> = (0..4).map(|_| json!({"payload": big})).collect();
        let (status, body) = post(&s.url("/v1/topics/big.page/events"), &json!(batch)).await;
        assert_eq!(status, 201, "{body}");
    }
    // 12 events of just under 4 MiB: a page of up to 1000 stops once it
    // holds 32 MiB (9 events).
    let (status, page) = get(&s.url("/v1/topics/big.page/events?limit=1000")).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 9);
    assert_eq!(page["next_seq"], 10);
    let (_, rest) = get(&s.url("/v1/topics/big.page/events?limit=1000&from_seq=10")).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_seq"], Value::Null);
}

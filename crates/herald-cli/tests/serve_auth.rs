//! `herald serve` with API tokens: a missing or unknown token is
//! `UNAUTHORIZED` (401), a token used outside its patterns `FORBIDDEN`
//! (403), on HTTP and on the WebSocket; serving a command and joining a
//! named group need grants of their own; the rate limit answers 429 with
//! `Retry-After`; tokens are found however a client spells them; an open
//! server refuses to listen beyond loopback.

mod support;

use serde_json::{json, Value};
use support::{send, Served, Ws};

fn grant(name: &str, secret: &str, publish: &[&str], subscribe: &[&str], admin: bool) -> Value {
    json!({
        "name": name,
        "sha256": support::token_hash(secret),
        "publish": publish,
        "subscribe": subscribe,
        "admin": admin,
    })
}

fn tokens() -> String {
    json!([
        grant(
            "orders",
            "orders-secret",
            &["orders.>"],
            &["orders.*"],
            false
        ),
        grant("ops", "ops-secret", &[], &[], true),
    ])
    .to_string()
}

/// A reader of `orders.*`, the fulfilment service (serves `orders.cancel`,
/// owns group `fulfilment`) and a caller of `orders.cancel`.
fn service_tokens() -> String {
    let mut fulfilment = grant("fulfilment", "f-secret", &[], &["orders.*"], false);
    fulfilment["serve"] = json!(["orders.cancel"]);
    fulfilment["groups"] = json!(["fulfilment"]);
    let mut caller = grant("shop", "shop-secret", &["orders.>"], &[], false);
    caller["call"] = json!(["orders.cancel"]);
    json!([
        grant("reader", "r-secret", &[], &["orders.*"], false),
        fulfilment,
        caller
    ])
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_scoped() {
    let tokens = tokens();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    let c = reqwest::Client::new();
    let publish = |token: Option<&str>, topic: &str| {
        let mut r = c
            .post(s.url(&format!("/v1/topics/{topic}/events")))
            .json(&json!({"payload": 1}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        send(r)
    };
    let (status, body) = publish(None, "orders.placed").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHORIZED")),
        "{body}"
    );
    let (status, body) = publish(Some("wrong"), "orders.placed").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHORIZED")));
    let (status, body) = publish(Some("orders-secret"), "orders.placed").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = publish(Some("orders-secret"), "billing.sent").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    // Refused before its body is read: a body that is not even JSON.
    let (status, body) = send(
        c.post(s.url("/v1/topics/billing.sent/events"))
            .bearer_auth("orders-secret")
            .header("content-type", "application/json")
            .body("not json"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (status, body) = send(
        c.post(s.url("/v1/commands/orders.cancel"))
            .bearer_auth("orders-secret")
            .json(&json!({"payload": 1})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "call needs call"
    );
    for path in ["/v1/groups", "/v1/slo", "/metrics", "/v1/dead-letters/1"] {
        let (status, body) = send(c.get(s.url(path)).bearer_auth("orders-secret")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{path}: {body}"
        );
    }
    let (status, _) = send(
        c.post(s.url("/v1/dead-letters/purge"))
            .bearer_auth("orders-secret")
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(status, 403, "purging is admin");
    let (status, _) = publish(Some("ops-secret"), "orders.placed").await;
    assert_eq!(status, 403, "admin is not publish");

    let (status, body) = send(
        c.get(s.url("/v1/dead-letters"))
            .bearer_auth("orders-secret"),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = send(c.get(s.url("/v1/topics")).bearer_auth("ops-secret")).await;
    assert_eq!(status, 200);
    let (status, _) = send(c.get(s.url("/metrics"))).await;
    assert_eq!(status, 401);
    let (status, _) = send(c.get(s.url("/healthz"))).await;
    assert_eq!(status, 200, "health needs no token");
    let (status, _) = send(
        c.get(s.url("/v1/topics/orders.placed/events"))
            .bearer_auth("orders-secret"),
    )
    .await;
    assert_eq!(status, 200, "replay is a subscribe");
    let (status, _) = send(
        c.get(s.url("/v1/topics/orders.placed.x/events"))
            .bearer_auth("orders-secret"),
    )
    .await;
    assert_eq!(status, 403, "orders.* does not cover orders.placed.x");

    // The WebSocket: no token, no upgrade; a token's patterns bound what it may subscribe to.
    let refused = tokio_tungstenite::connect_async(s.ws_url(None)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    let mut ws = Ws::connect(&s.ws_url(Some("orders-secret"))).await;
    ws.send(json!({"op": "subscribe", "id": "all", "pattern": ">"}))
        .await;
    assert_eq!(ws.recv().await["code"], "FORBIDDEN");
    ws.subscribe("mine", "orders.*", json!({})).await;
    ws.send(json!({"op": "publish", "topic": "billing.x", "messages": [{"payload": 1}]}))
        .await;
    assert_eq!(ws.recv().await["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_and_others_go_on() {
    let tokens = tokens();
    let s = Served::start(&[
        ("HERALD_TOKENS", tokens.as_str()),
        ("HERALD_RATE_LIMIT", "5"),
    ])
    .await;
    let c = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..40 {
        let (status, body) = send(c.get(s.url("/v1/topics")).bearer_auth("ops-secret")).await;
        codes.push((status, body["code"].as_str().map(str::to_owned)));
    }
    let limited = codes
        .iter()
        .filter(|(s, c)| *s == 429 && c.as_deref() == Some("BACKPRESSURE"))
        .count();
    assert!(limited > 0, "{codes:?}");
    assert!(
        codes.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{codes:?}"
    );
    // Another token has its own budget.
    let (status, _) = send(
        c.post(s.url("/v1/topics/orders.placed/events"))
            .bearer_auth("orders-secret")
            .json(&json!({"payload": 1})),
    )
    .await;
    assert_eq!(status, 201);
}

#[test]
fn an_open_server_listens_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "VALIDATION's exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error[VALIDATION]") && err.contains("HERALD_LISTEN"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_a_command_needs_the_serve_grant_not_subscribe() {
    let tokens = service_tokens();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    // A token that may read orders.* cannot become orders.cancel's handler.
    let mut reader = Ws::connect(&s.ws_url(Some("r-secret"))).await;
    reader
        .send(json!({"op": "handle", "topic": "orders.cancel"}))
        .await;
    let f = reader.recv().await;
    assert_eq!(
        (f["op"].as_str(), f["code"].as_str()),
        (Some("error"), Some("FORBIDDEN")),
        "{f}"
    );
    assert_eq!(f["ref"], "orders.cancel");
    // The service that holds the grant can, and callers reach it, not the reader.
    let mut service = Ws::connect(&s.ws_url(Some("f-secret"))).await;
    service
        .send(json!({"op": "handle", "topic": "orders.cancel"}))
        .await;
    assert_eq!(service.recv().await["op"], "handling");
    let c = reqwest::Client::new();
    let call = tokio::spawn(send(
        c.post(s.url("/v1/commands/orders.cancel"))
            .bearer_auth("shop-secret")
            .json(&json!({"payload": {"order": 7}})),
    ));
    let command = service.recv_op("command").await;
    assert_eq!(command["envelope"]["payload"], json!({"order": 7}));
    service
        .send(json!({"op": "reply", "call": command["call"], "payload": "cancelled"}))
        .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "cancelled");
    // Calling is not serving either.
    let mut shop = Ws::connect(&s.ws_url(Some("shop-secret"))).await;
    shop.send(json!({"op": "handle", "topic": "orders.cancel"}))
        .await;
    assert_eq!(shop.recv().await["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_named_group_needs_the_groups_grant() {
    let tokens = service_tokens();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    let mut owner = Ws::connect(&s.ws_url(Some("f-secret"))).await;
    owner
        .subscribe("work", "orders.*", json!({"group": "fulfilment"}))
        .await;
    // A reader of the same pattern cannot join the group (and so never
    // receives, or settles, its deliveries); it may still read group-less.
    let mut reader = Ws::connect(&s.ws_url(Some("r-secret"))).await;
    reader
        .send(
            json!({"op": "subscribe", "id": "steal", "pattern": "orders.*", "group": "fulfilment"}),
        )
        .await;
    let f = reader.recv().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("FORBIDDEN"), Some("steal")),
        "{f}"
    );
    reader.subscribe("tail", "orders.*", json!({})).await;
    let c = reqwest::Client::new();
    for n in 0..5 {
        let (status, body) = send(
            c.post(s.url("/v1/topics/orders.placed/events"))
                .bearer_auth("shop-secret")
                .json(&json!({"payload": n})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    for n in 0..5 {
        let e = owner.recv_op("event").await;
        assert_eq!(
            e["envelope"]["payload"], n,
            "the owner gets every event: {e}"
        );
        owner
            .send(json!({"op": "ack", "delivery": e["delivery"]}))
            .await;
        assert_eq!(reader.recv_op("event").await["envelope"]["payload"], n);
    }
    // Settling reaches only this connection's own deliveries.
    reader.send(json!({"op": "term", "delivery": 1000})).await;
    assert_eq!(reader.recv_op("error").await["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_found_in_any_case_and_any_encoding() {
    let secret = "a/b+c=d@e f";
    let tokens = json!([grant("odd", secret, &["odd.>"], &["odd.>"], false)]).to_string();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    let c = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) = send(
            c.post(s.url("/v1/topics/odd.one/events"))
                .header("authorization", format!("{scheme} {secret}"))
                .json(&json!({"payload": 1})),
        )
        .await;
        assert_eq!(status, 201, "{scheme}: {body}");
    }
    // As the admin page sends it: encodeURIComponent.
    let encoded = "a%2Fb%2Bc%3Dd%40e%20f";
    let url = format!("ws://127.0.0.1:{}/v1/ws?token={encoded}", s.port);
    let mut ws = Ws::connect(&url).await;
    ws.subscribe("t", "odd.>", json!({})).await;
    // And as `herald tail --token` connects (its WebSocket URL encodes it).
    let (status, _) = send(
        c.post(s.url("/v1/topics/odd.two/events"))
            .bearer_auth(secret)
            .json(&json!({"payload": 2})),
    )
    .await;
    assert_eq!(status, 201);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["tail", "odd.>", "--from", "earliest", "--count", "4"])
        .args(["--server", &s.base, "--token", secret])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("odd.two"));
}

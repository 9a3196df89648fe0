//! `herald serve` with API tokens: a missing or unknown token is
//! `UNAUTHORIZED` (401), a token used outside its patterns `FORBIDDEN`
//! (403), on HTTP and on the WebSocket; the rate limit answers 429; an open
//! server refuses to listen beyond loopback.

mod support;

use serde_json::json;
use support::{send, Served, Ws};

fn tokens() -> String {
    let grant = |name: &str, secret: &str, publish: &[&str], subscribe: &[&str], admin: bool| {
        json!({
            "name": name,
            "sha256": herald_sha256(secret),
            "publish": publish,
            "subscribe": subscribe,
            "admin": admin,
        })
    };
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

/// What `herald token NAME --secret S` prints as the hash.
fn herald_sha256(secret: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "t", "--secret", secret])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("sha256"))
        .expect("a sha256 line");
    line.split('"').nth(1).unwrap().to_owned()
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

//! What a web page in the operator's browser can make an open `herald
//! serve` do: nothing. Another origin's requests and WebSocket upgrades are
//! refused, a rebinding host name is refused, a form or no-cors `fetch`
//! (which cannot say `application/json`) changes nothing, and no page may
//! frame the admin page. Each case is what a browser would send, written
//! out by hand.

mod support;

use serde_json::{json, Value};
use support::{get, send, Served};

/// A request as a page at `origin` makes it.
fn from_page(method: reqwest::Method, url: &str, origin: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, url)
        .header("origin", origin)
}

async fn events(s: &Served, topic: &str) -> Vec<Value> {
    let (status, page) = get(&s.url(&format!("/v1/topics/{topic}/events"))).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_origins_change_and_read_nothing() {
    let s = Served::start(&[("HERALD_ALLOWED_ORIGINS", "http://ops.example:8080")]).await;
    let publish = s.url("/v1/topics/secret.orders/events");
    let body = json!({"payload": {"card": "4111"}}).to_string();

    // A no-cors fetch with a Blob body goes out as text/plain: refused.
    let (status, answer) = send(
        from_page(reqwest::Method::POST, &publish, "http://evil.example")
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{answer}"
    );
    // Even without an Origin header (an old browser, a form), text/plain
    // and form bodies publish nothing.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, answer) = send(
            reqwest::Client::new()
                .post(&publish)
                .header("content-type", ct)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (415, Some("VALIDATION")),
            "{ct}: {answer}"
        );
    }
    // A plain HTML form to a route without a body.
    let (status, answer) = send(
        reqwest::Client::new()
            .post(s.url("/v1/dead-letters/purge"))
            .header("content-type", "application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (415, Some("VALIDATION")),
        "{answer}"
    );
    // A JSON request from another origin (its preflight would fail; sent
    // anyway here) and from the sandboxed `null` origin.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, answer) = send(
            from_page(reqwest::Method::POST, &publish, origin)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{origin}: {answer}"
        );
    }
    assert!(
        events(&s, "secret.orders").await.is_empty(),
        "nothing was published"
    );

    // The server's own origin and an allowed one may.
    for origin in [s.base.as_str(), "http://ops.example:8080"] {
        let (status, answer) = send(
            from_page(reqwest::Method::POST, &publish, origin)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 201, "{origin}: {answer}");
    }
    // A route without a body works with the JSON content type.
    let (status, answer) = send(
        reqwest::Client::new()
            .post(s.url("/v1/dead-letters/purge"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(events(&s, "secret.orders").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_another_origin_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = Served::start(&[]).await;
    let upgrade = |origin: &str| {
        let mut req = s.ws_url(None).into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match upgrade("http://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    let (mut ws, _) = upgrade(&s.base).await.expect("the own origin may");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_name_is_refused() {
    let s = Served::start(&[]).await;
    let c = reqwest::Client::new();
    for host in ["evil.example", "evil.example:7070", "127.0.0.1.nip.io"] {
        let (status, answer) = send(c.get(s.url("/v1/topics")).header("host", host)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{host}: {answer}"
        );
    }
    for host in ["localhost", "127.0.0.1", "LOCALHOST:1234"] {
        let (status, answer) = send(c.get(s.url("/v1/topics")).header("host", host)).await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
    // Probes may address the server by any name.
    let (status, _) = send(c.get(s.url("/healthz")).header("host", "10.1.2.3:7070")).await;
    assert_eq!(status, 200);

    // With HERALD_ALLOWED_HOSTS, only those names.
    let named = Served::start(&[("HERALD_ALLOWED_HOSTS", "herald.internal")]).await;
    let (status, _) = send(
        c.get(named.url("/v1/topics"))
            .header("host", "herald.internal:80"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(c.get(named.url("/v1/topics")).header("host", "localhost")).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_may_frame_the_server() {
    let s = Served::start(&[]).await;
    for path in ["/", "/v1/topics", "/no/such/route"] {
        let r = reqwest::get(s.url(path)).await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-frame-options")
                .map(|v| v.to_str().unwrap()),
            Some("DENY"),
            "{path}"
        );
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
    let page = reqwest::get(s.url("/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
}

//! Bad input against a running `herald serve`: each kind gets its
//! documented status and error code, the server keeps serving, and nothing
//! accepted before is lost.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{get, post, send, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(s: &Served, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    send(
        reqwest::Client::new()
            .post(s.url(path))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_gets_its_code_and_loses_nothing() {
    let s = Served::start(&[
        ("HERALD_MAX_PAYLOAD_BYTES", "4096"),
        ("HERALD_MAX_REQUEST_BYTES", "65536"),
    ])
    .await;
    let good: Vec<Value> = (1..=10).map(|n| json!({"payload": n})).collect();
    let (status, _) = post(&s.url("/v1/topics/safe.keep/events"), &json!(good)).await;
    assert_eq!(status, 201);

    let path = "/v1/topics/bad.input/events";
    let json_ct = "application/json";
    let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
    let headers: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("h{i}"), json!("v"))).collect();
    let cases: Vec<(&str, u16, &str, (u16, Value))> = vec![
        (
            "malformed JSON",
            400,
            "VALIDATION",
            raw(&s, path, json_ct, b"{\"payload\": ".to_vec()).await,
        ),
        (
            "wrong type",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload": 1, "key": 7})).await,
        ),
        (
            "unknown field",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload": 1, "colour": "red"})).await,
        ),
        (
            "bad priority",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload": 1, "priority": "urgent"})).await,
        ),
        (
            "invalid topic",
            400,
            "VALIDATION",
            post(
                &s.url("/v1/topics/Bad..Topic/events"),
                &json!({"payload": 1}),
            )
            .await,
        ),
        (
            "oversize payload",
            413,
            "BACKPRESSURE",
            post(&s.url(path), &json!({"payload": "x".repeat(5000)})).await,
        ),
        (
            "oversize body",
            413,
            "BACKPRESSURE",
            raw(&s, path, json_ct, vec![b' '; 70_000]).await,
        ),
        (
            "too many headers",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload": 1, "headers": headers})).await,
        ),
        (
            "deep nesting",
            400,
            "VALIDATION",
            raw(
                &s,
                path,
                json_ct,
                format!("{{\"payload\": {deep}}}").into_bytes(),
            )
            .await,
        ),
        (
            "invalid UTF-8",
            400,
            "VALIDATION",
            raw(&s, path, json_ct, b"{\"payload\": \"\xff\xfe\"}".to_vec()).await,
        ),
        (
            "wrong content type",
            415,
            "VALIDATION",
            raw(&s, path, "text/csv", b"a,b".to_vec()).await,
        ),
        (
            "empty batch",
            400,
            "VALIDATION",
            post(&s.url(path), &json!([])).await,
        ),
        (
            "command kind on publish",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload": 1, "kind": "command"})).await,
        ),
        (
            "bad base64",
            400,
            "VALIDATION",
            post(&s.url(path), &json!({"payload_base64": "!!"})).await,
        ),
        (
            "unknown route",
            404,
            "NOT_FOUND",
            get(&s.url("/v2/everything")).await,
        ),
        (
            "wrong method",
            405,
            "VALIDATION",
            send(
                reqwest::Client::new()
                    .delete(s.url("/v1/topics"))
                    .header("content-type", "application/json"),
            )
            .await,
        ),
        (
            "bad query",
            400,
            "VALIDATION",
            get(&s.url("/v1/topics/safe.keep/events?from_seq=banana")).await,
        ),
        (
            "unknown query",
            400,
            "VALIDATION",
            get(&s.url("/v1/topics/safe.keep/events?form_seq=1")).await,
        ),
        (
            "zero seq",
            400,
            "VALIDATION",
            get(&s.url("/v1/topics/safe.keep/events?from_seq=0")).await,
        ),
        (
            "bad dead letter id",
            400,
            "VALIDATION",
            get(&s.url("/v1/dead-letters/abc")).await,
        ),
        (
            "bad code filter",
            400,
            "VALIDATION",
            get(&s.url("/v1/dead-letters?code=OOPS")).await,
        ),
    ];
    for (what, status, code, (got_status, body)) in cases {
        assert_eq!(got_status, status, "{what}: {body}");
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }

    // Nothing of the bad topic was published; the good events are intact.
    let (_, bad) = get(&s.url("/v1/topics/bad.input/events")).await;
    assert_eq!(bad["events"], json!([]));
    let (_, page) = get(&s.url("/v1/topics/safe.keep/events")).await;
    let kept: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, (1..=10).collect::<Vec<_>>());
    assert!(
        s.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_refused_and_others_are_served() {
    let s = Served::start(&[
        ("HERALD_MAX_CONNECTIONS", "8"),
        // The held connections sit idle; they must outlive the test.
        ("HERALD_IDLE_TIMEOUT", "3600"),
    ])
    .await;
    // Hold 8 idle connections, each answered once, so the server has taken
    // all 8 slots (the start-up probe's connection may still hold one for a
    // moment: a connection refused then is simply replaced).
    let mut held = Vec::new();
    while held.len() < 8 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        if answered_ok(&mut c).await {
            held.push(c);
        }
    }
    // Each connection over the limit gets a complete 503 and is closed
    // (the server reads the request away first, so its close is not a
    // reset that would discard the answer).
    let mut answers = Vec::new();
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(support::WAIT, c.read_to_end(&mut answer)).await;
        answers.push((read.is_ok(), String::from_utf8_lossy(&answer).into_owned()));
    }
    let refused = answers
        .iter()
        .filter(|(_, a)| a.starts_with("HTTP/1.1 503") && a.contains("\"code\":\"BACKPRESSURE\""))
        .count();
    assert_eq!(refused, 50, "{answers:?}");
    // An HTTP client library reads the refusal as an answer too: the
    // server reads the request before it answers, so the client never
    // sees a response it did not ask for (hyper's "unexpected message").
    for _ in 0..20 {
        let (status, body) = get(&s.url("/healthz")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "BACKPRESSURE", "{body}");
    }
    // Freeing connections lets new clients in again.
    held.clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = reqwest::Client::new().get(s.url("/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read one answer on a keep-alive connection: whether it is a 200 (a
/// refused connection gets a 503 and is closed).
async fn answered_ok(c: &mut tokio::net::TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(support::WAIT, c.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.starts_with("HTTP/1.1 200");
            }
        }
        if n == 0 {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_one_code_and_never_retryable() {
    let s = Served::start(&[
        ("HERALD_MAX_PAYLOAD_BYTES", "1024"),
        ("HERALD_MAX_BATCH", "3"),
        ("HERALD_MAX_REQUEST_BYTES", "65536"),
    ])
    .await;
    let path = "/v1/topics/big.x/events";
    let batch: Vec<Value> = (0..4).map(|n| json!({"payload": n})).collect();
    for (what, (status, body)) in [
        (
            "payload",
            post(&s.url(path), &json!({"payload": "x".repeat(2000)})).await,
        ),
        ("batch", post(&s.url(path), &json!(batch)).await),
        (
            "body",
            raw(&s, path, "application/json", vec![b' '; 70_000]).await,
        ),
    ] {
        assert_eq!(
            (status, body["code"].as_str(), body["retryable"].as_bool()),
            (413, Some("BACKPRESSURE"), Some(false)),
            "{what}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_payload_of_exactly_the_limit_passes() {
    use base64::Engine;
    let s = Served::start(&[("HERALD_MAX_PAYLOAD_BYTES", "1024")]).await;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0xabu8; n]);
    let path = s.url("/v1/topics/bytes.x/events");
    let body =
        |n: usize| json!({"payload_base64": b64(n), "content_type": "application/octet-stream"});
    // 1024 = 3 × 341 + 1: the text ends in `==`.
    assert!(b64(1024).ends_with("=="));
    let (status, answer) = post(&path, &body(1024)).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = post(&path, &body(1025)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("BACKPRESSURE")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevent_attributes_are_checked_and_kept() {
    let s = Served::start(&[]).await;
    let path = "/v1/topics/ce.orders/events";
    let ce = |extra: Value| {
        let mut e = json!({"specversion": "1.0", "id": "A-1", "source": "/shop",
                           "type": "ce.orders", "data": {"n": 1}});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&e).unwrap()
    };
    let cloudevents = "application/cloudevents+json";
    for bad in [
        json!({"time": "noon"}),
        json!({"time": 5}),
        json!({"dataschema": "not a uri"}),
        json!({"subject": ""}),
    ] {
        let (status, body) = raw(&s, path, cloudevents, ce(bad.clone())).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("VALIDATION")),
            "{bad}: {body}"
        );
    }
    let good = json!({"time": "2026-12-04T10:00:00.123Z", "subject": "order/7",
                      "dataschema": "https://schemas.example/orders/1"});
    let (status, body) = raw(&s, path, cloudevents, ce(good)).await;
    assert_eq!(status, 201, "{body}");
    let replayed = send(
        reqwest::Client::new()
            .get(s.url(path))
            .header("accept", "application/cloudevents-batch+json"),
    )
    .await
    .1;
    let back = &replayed[0];
    assert_eq!(back["time"], "2026-12-04T10:00:00.123Z", "{replayed}");
    assert_eq!(back["subject"], "order/7");
    assert_eq!(back["dataschema"], "https://schemas.example/orders/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_tell_the_client_what_to_do_next() {
    let s = Served::start(&[
        (
            "HERALD_TOKENS",
            &format!(
                r#"[{{"name": "t", "sha256": "{}", "publish": [">"]}}]"#,
                sha256_of("t-secret")
            ),
        ),
        ("HERALD_RATE_LIMIT", "1"),
    ])
    .await;
    // A 401 decided before the body is read closes the connection, and says so.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let body = r#"{"payload": 1}"#;
    c.write_all(
        format!(
            "POST /v1/topics/a.b/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nauthorization: Bearer wrong\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(support::WAIT, c.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // 429 says when to come back.
    let client = reqwest::Client::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let r = client
            .post(s.url("/v1/topics/a.b/events"))
            .bearer_auth("t-secret")
            .json(&json!({"payload": 1}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            break;
        }
    }
    let seconds: u64 = retry_after
        .expect("a 429 with Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&seconds), "{seconds}");
}

/// What `herald token t --secret SECRET` prints as the hash.
fn sha256_of(secret: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "t", "--secret", secret])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find(|l| l.starts_with("sha256"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_bad_values_briefly_and_carry_the_request_id() {
    let s = Served::start(&[]).await;
    let key = "k".repeat(100_000);
    let r = reqwest::Client::new()
        .post(s.url("/v1/topics/a.b/events"))
        .header("x-request-id", "trace-42")
        .json(&json!({"payload": 1, "key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let body: Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.len() < 1024, "{} bytes", message.len());
    assert_eq!(body["request_id"], "trace-42");
    // A request without one gets one; a bad one is replaced.
    for sent in [None, Some("no spaces allowed")] {
        let mut req = reqwest::Client::new().get(s.url("/v1/topics"));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let r = req.send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }
    // The access log has the request, never a query string.
    let _ = get(&s.url("/v1/topics/a.b/events?from_seq=1&token=hidden")).await;
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !s.log().contains("trace-42") {
        assert!(tokio::time::Instant::now() < deadline, "{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = s.log();
    let line = log.lines().find(|l| l.contains("trace-42")).unwrap();
    assert!(
        line.contains("herald::access") && line.contains("status=400"),
        "{line}"
    );
    assert!(!log.contains("hidden"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = Served::start(&[]).await;
    let (status, _) = post(&s.url("/v1/topics/a.b/events"), &json!({"payload": 1})).await;
    assert_eq!(status, 201);
    for (file, mode) in [
        ("herald-data", 0o700),
        ("herald-data/herald.db", 0o600),
        ("herald-data/herald.db-wal", 0o600),
    ] {
        let meta = std::fs::metadata(s.dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
}

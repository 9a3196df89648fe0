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
            send(reqwest::Client::new().delete(s.url("/v1/topics"))).await,
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
    let s = Served::start(&[("HERALD_MAX_CONNECTIONS", "8")]).await;
    // Hold 8 idle connections: the limit is reached.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", s.port))
                .await
                .unwrap(),
        );
    }
    // Each connection over the limit gets a complete 503 and is closed.
    let mut refused = 0;
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await;
        if answer.starts_with("HTTP/1.1 503") && answer.contains("\"code\":\"BACKPRESSURE\"") {
            refused += 1;
        }
    }
    assert_eq!(refused, 50);
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

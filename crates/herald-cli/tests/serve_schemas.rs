//! `herald serve`'s contracts routes, as a real process: register, read,
//! dry-run and delete schema subjects over HTTP, every publish path (HTTP
//! and WebSocket) checked against them, each answer as `/openapi.json`
//! documents it; and the abuse cases: a token without the `schemas` grant,
//! bad schemas, unknown subjects and versions, an oversize body.

mod support;

use serde_json::{json, Value};
use support::{get, openapi_check, post, send, Served, Ws};

fn order_v1() -> Value {
    json!({
        "type": "object",
        "required": ["id", "total"],
        "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}
    })
}

fn encoded(subject: &str) -> String {
    subject.replace('>', "%3E").replace('*', "%2A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_are_registered_read_checked_and_deleted_and_publishes_obey_them() {
    let s = Served::start(&[]).await;
    let (_, doc) = get(&s.url("/openapi.json")).await;
    let body = json!({"subject": "orders.*", "schema": order_v1(), "owner": "billing"});
    let (status, registered) = post(&s.url("/v1/schemas"), &body).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["version"], 1);
    openapi_check(&doc, "post", "/v1/schemas", 201, &registered);

    let mut v2 = order_v1();
    v2["properties"]["note"] = json!({"type": "string"});
    let (status, second) = post(
        &s.url("/v1/schemas"),
        &json!({"subject": "orders.*", "schema": v2}),
    )
    .await;
    assert_eq!(
        (status, second["version"].as_u64()),
        (201, Some(2)),
        "{second}"
    );

    // A dry run of a breaking version names what breaks, and stores nothing.
    let mut v3 = order_v1();
    v3["required"] = json!(["id"]);
    let check_url = s.url(&format!("/v1/schemas/{}/check", encoded("orders.*")));
    let (status, checked) = post(&check_url, &json!({"schema": v3})).await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["compatible"], false);
    let names_total = checked["breaking"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["change"].as_str().unwrap().contains("`total`"));
    assert!(names_total, "{checked}");
    openapi_check(&doc, "post", "/v1/schemas/{subject}/check", 200, &checked);
    let (status, refused) = post(
        &s.url("/v1/schemas"),
        &json!({"subject": "orders.*", "schema": v3}),
    )
    .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("VALIDATION")),
        "{refused}"
    );

    let (status, list) = get(&s.url("/v1/schemas")).await;
    assert_eq!(status, 200);
    openapi_check(&doc, "get", "/v1/schemas", 200, &list);
    assert_eq!(list["subjects"][0]["owner"], "billing");
    assert_eq!(list["subjects"][0]["versions"].as_array().unwrap().len(), 2);
    let (status, one) = get(&s.url(&format!("/v1/schemas/{}", encoded("orders.*")))).await;
    assert_eq!(status, 200);
    openapi_check(&doc, "get", "/v1/schemas/{subject}", 200, &one);
    let (status, v) = get(&s.url(&format!("/v1/schemas/{}/versions/1", encoded("orders.*")))).await;
    assert_eq!((status, &v["schema"]), (200, &order_v1()));
    openapi_check(&doc, "get", "/v1/schemas/{subject}/versions/{n}", 200, &v);

    // Publishing over HTTP and over the WebSocket is checked.
    let events = s.url("/v1/topics/orders.placed/events");
    let (status, ok) = post(&events, &json!({"payload": {"id": "o-1", "total": 5}})).await;
    assert_eq!(status, 201, "{ok}");
    let (status, bad) = post(&events, &json!({"payload": {"id": "o-2", "total": "five"}})).await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("VALIDATION")),
        "{bad}"
    );
    assert!(bad["message"].as_str().unwrap().contains("/total"), "{bad}");
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.send(json!({"op": "publish", "ref": "p1", "topic": "orders.placed", "messages": [{"payload": {"id": 3}}]}))
        .await;
    let e = ws.recv_op("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("VALIDATION"), Some("p1")),
        "{e}"
    );

    let client = reqwest::Client::new();
    let subject_url = s.url(&format!("/v1/schemas/{}", encoded("orders.*")));
    let (status, _) = send(
        client
            .delete(&subject_url)
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = post(
        &events,
        &json!({"payload": {"id": "o-4", "total": "any now"}}),
    )
    .await;
    assert_eq!(status, 201, "a deleted subject checks nothing");
    let (status, gone) = send(
        client
            .delete(&subject_url)
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!((status, gone["code"].as_str()), (404, Some("NOT_FOUND")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_bounds_and_bad_input_are_refused_and_change_nothing() {
    let hash = support::token_hash;
    let tokens = json!([
        {"name": "owner", "sha256": hash("owner-secret"), "schemas": ["orders.>"]},
        {"name": "reader", "sha256": hash("reader-secret"), "subscribe": ["orders.*"]},
        {"name": "stranger", "sha256": hash("stranger-secret"), "publish": ["payments.>"]},
    ])
    .to_string();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    let client = reqwest::Client::new();
    let as_ = |secret: &'static str, req: reqwest::RequestBuilder| req.bearer_auth(secret);
    let register = |secret: &'static str, body: Value| {
        as_(secret, client.post(s.url("/v1/schemas")).json(&body))
    };

    let body = json!({"subject": "orders.*", "schema": order_v1()});
    let (status, e) = send(register("reader-secret", body.clone())).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "reading is not registering"
    );
    let (status, e) = send(register(
        "owner-secret",
        json!({"subject": "payments.*", "schema": order_v1()}),
    ))
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "outside the grant"
    );
    let (status, _) = send(client.post(s.url("/v1/schemas")).json(&body)).await;
    assert_eq!(status, 401, "no token");
    let (status, ok) = send(register("owner-secret", body)).await;
    assert_eq!(status, 201, "{ok}");

    for (body, why) in [
        (
            json!({"subject": "orders.*", "schema": {"type": 12}}),
            "not a JSON Schema",
        ),
        (
            json!({"subject": "orders.placed", "schema": {"type": "string"}}),
            "overlaps orders.*",
        ),
        (
            json!({"subject": "Not A Pattern", "schema": {}}),
            "a bad subject",
        ),
        (
            json!({"subject": "orders.*", "schema": {}, "compatibility": "sideways"}),
            "an unknown mode",
        ),
        (
            json!({"subject": "orders.*", "schema": {}, "extra": 1}),
            "an unknown field",
        ),
        (
            json!({"subject": "orders.*", "schema": {"description": "x".repeat(herald::contract::MAX_SCHEMA_BYTES)}}),
            "oversize",
        ),
    ] {
        let (status, e) = send(register("owner-secret", body)).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (400, Some("VALIDATION")),
            "{why}: {e}"
        );
    }
    let (status, e) = send(as_(
        "owner-secret",
        client.get(s.url("/v1/schemas/orders.%2A/versions/7")),
    ))
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{e}"
    );
    let (status, e) = send(as_(
        "owner-secret",
        client.get(s.url("/v1/schemas/orders.%2A/versions/x")),
    ))
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("VALIDATION")),
        "{e}"
    );

    // Who sees what: the reader reads the subject its subscriptions cover;
    // a stranger sees none of it.
    let (status, list) = send(as_("reader-secret", client.get(s.url("/v1/schemas")))).await;
    assert_eq!(
        (status, list["subjects"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let versions = &list["subjects"][0]["versions"];
    assert_eq!(
        versions.as_array().map(Vec::len),
        Some(1),
        "the refusals registered nothing"
    );
    let (status, list) = send(as_("stranger-secret", client.get(s.url("/v1/schemas")))).await;
    assert_eq!(
        (status, list["subjects"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, e) = send(as_(
        "stranger-secret",
        client.get(s.url("/v1/schemas/orders.%2A")),
    ))
    .await;
    assert_eq!((status, e["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, e) = send(as_(
        "reader-secret",
        client
            .delete(s.url("/v1/schemas/orders.%2A"))
            .header("content-type", "application/json"),
    ))
    .await;
    assert_eq!((status, e["code"].as_str()), (403, Some("FORBIDDEN")));
    let check = client
        .post(s.url("/v1/schemas/orders.%2A/check"))
        .json(&json!({"schema": {}}));
    let (status, e) = send(as_("stranger-secret", check)).await;
    assert_eq!((status, e["code"].as_str()), (403, Some("FORBIDDEN")));
}

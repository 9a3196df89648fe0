//! The event catalog of a live bus: `GET /v1/asyncapi.json` and `herald
//! catalog [--asyncapi]`, against a real server and directly on its store.
//! The AsyncAPI document is validated by `tests/browser/asyncapi.mjs`
//! against the official AsyncAPI 3.0.0 JSON Schema (`@asyncapi/specs`) and
//! by `@asyncapi/parser`; the table shows each topic's owner, schema
//! version, producers, groups and rate; a token sees only the channels its
//! grants cover, and no token sees nothing.

mod support;

use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{get, herald, post, send, Served, Ws};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Validate `document` with `tests/browser/asyncapi.mjs`.
fn assert_valid_asyncapi(document: &Value) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), document.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/asyncapi.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(file.path())
        .output()
        .expect("node runs (scripts/test installs the test's npm packages)");
    assert!(
        out.status.success(),
        "not valid AsyncAPI 3.0:\n{}{}\n{document:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn publish(s: &Served, topic: &str, payload: Value) {
    let (status, body) = post(
        &s.url(&format!("/v1/topics/{topic}/events")),
        &json!({"payload": payload}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_valid_asyncapi_and_a_table_of_every_topic() {
    let s = Served::start(&[]).await;
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string"}}
    });
    let body = json!({"subject": "orders.*", "schema": schema, "owner": "billing", "description": "orders as placed"});
    let (status, registered) = post(&s.url("/v1/schemas"), &body).await;
    assert_eq!(status, 201, "{registered}");
    publish(&s, "orders.placed", json!({"id": "o-1"})).await;
    publish(&s, "audit.login", json!({"user": "ada"})).await;
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "s",
        "orders.*",
        json!({"group": "shipping", "start": "earliest"}),
    )
    .await;
    ws.send(json!({"op": "handle", "topic": "orders.cancel"}))
        .await;
    assert_eq!(ws.recv_op("handling").await["topic"], "orders.cancel");

    let (status, doc) = get(&s.url("/v1/asyncapi.json")).await;
    assert_eq!(status, 200, "{doc}");
    assert_valid_asyncapi(&doc);
    assert_eq!(doc["asyncapi"], "3.0.0");
    let orders = &doc["channels"]["orders.X"];
    assert_eq!(orders["address"], "orders.{segment1}", "{doc:#}");
    assert_eq!(orders["description"], "orders as placed");
    let x = &orders["x-herald"];
    assert_eq!(x["owner"], "billing");
    assert_eq!(x["schema_version"], 1);
    assert_eq!(x["topics"], json!(["orders.placed"]));
    assert_eq!(x["groups"], json!(["shipping"]), "{doc:#}");
    assert_eq!(x["producers"].as_array().unwrap().len(), 1, "{x}");
    let message = &doc["components"]["messages"]["orders.X"];
    assert_eq!(message["payload"]["required"], json!(["id"]));
    assert!(message["payload"].get("$schema").is_none());
    assert_eq!(doc["channels"]["audit.login"]["x-herald"]["kind"], "topic");
    assert_eq!(
        doc["channels"]["orders.cancel"]["x-herald"]["kind"],
        "command"
    );
    let operations = doc["operations"].as_object().unwrap();
    assert_eq!(
        operations["shipping.receives.orders.X"]["action"],
        "receive"
    );
    assert_eq!(operations["handles.orders.cancel"]["action"], "receive");
    let producer = x["producers"][0].as_str().unwrap();
    assert_eq!(
        operations[&format!("{producer}.sends.orders.X")]["messages"][0]["$ref"],
        "#/channels/orders.X/messages/orders.X"
    );
    assert_eq!(doc["servers"]["gateway"]["protocol"], "http");
    assert_eq!(doc["servers"]["gateway-ws"]["pathname"], "/v1/ws");

    let table = stdout(&herald(&["catalog"], &s));
    let row = table
        .lines()
        .find(|l| l.starts_with("orders.*"))
        .unwrap_or_else(|| panic!("{table}"));
    for cell in ["billing", "v1", "shipping", producer] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert!(table.contains("orders.cancel (command)"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("audit.login")));
    let printed: Value =
        serde_json::from_str(&stdout(&herald(&["catalog", "--asyncapi"], &s))).unwrap();
    assert_eq!(printed["channels"].as_object().unwrap().len(), 3);

    // The store read directly: the same channels, no gateway.
    let direct: Value = serde_json::from_str(&stdout(&herald(
        &[
            "catalog",
            "--asyncapi",
            "--store",
            "sqlite://herald-data/herald.db",
        ],
        &s,
    )))
    .unwrap();
    assert_valid_asyncapi(&direct);
    assert_eq!(
        direct["channels"]["orders.X"]["x-herald"]["owner"], "billing",
        "{direct:#}"
    );
    assert!(direct.get("servers").is_none(), "{direct:#}");
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sees_only_the_channels_its_grants_cover() {
    let hash = support::token_hash;
    let tokens = json!([
        {"name": "ops", "sha256": hash("ops-secret"), "admin": true, "publish": [">"]},
        {"name": "reader", "sha256": hash("reader-secret"), "subscribe": ["orders.>"]},
        {"name": "stranger", "sha256": hash("stranger-secret"), "publish": ["payments.>"]},
    ])
    .to_string();
    let s = Served::start(&[("HERALD_TOKENS", tokens.as_str())]).await;
    let c = reqwest::Client::new();
    for topic in ["orders.placed", "audit.login"] {
        let (status, body) = send(
            c.post(s.url(&format!("/v1/topics/{topic}/events")))
                .bearer_auth("ops-secret")
                .json(&json!({"payload": 1})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let catalog =
        |secret: &'static str| send(c.get(s.url("/v1/asyncapi.json")).bearer_auth(secret));
    let channels = |doc: &Value| -> Vec<String> {
        doc["channels"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let (status, all) = catalog("ops-secret").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(channels(&all), ["audit.login", "orders.placed"]);
    let (_, reader) = catalog("reader-secret").await;
    assert_eq!(channels(&reader), ["orders.placed"]);
    assert_valid_asyncapi(&reader);
    let (status, stranger) = catalog("stranger-secret").await;
    assert_eq!(status, 200);
    assert!(channels(&stranger).is_empty(), "{stranger}");
    assert_valid_asyncapi(&stranger);
    let (status, e) = send(c.get(s.url("/v1/asyncapi.json"))).await;
    assert_eq!((status, e["code"].as_str()), (401, Some("UNAUTHORIZED")));
    let (status, e) = send(c.get(s.url("/v1/asyncapi.json")).bearer_auth("wrong")).await;
    assert_eq!(status, 401, "{e}");
}

/// Each store's servers and bindings (Kafka's server and channel
/// partitions), the gateway over TLS, and names AsyncAPI ids cannot hold
/// are valid AsyncAPI 3.0 too, and no store credential shows.
#[test]
fn every_stores_bindings_are_valid_asyncapi() {
    use herald_server::catalog::{Catalog, Channel, ChannelKind, Endpoints};
    let catalog = Catalog {
        channels: vec![Channel {
            pattern: "orders.>".into(),
            kind: ChannelKind::Subject,
            owner: Some("billing".into()),
            description: Some("orders".into()),
            schema_version: Some(2),
            schema: Some(json!({"type": "object", "prefixItems": [], "$defs": {}})),
            topics: vec!["orders.placed".into()],
            producers: vec!["shop".into(), "shop/eu".into()],
            groups: vec!["shipping".into(), "billing/orders.>".into()],
            rate: 1.5,
            partitions: 3,
        }],
    };
    for store in [
        "kafka://broker-1:9092,broker-2:9092",
        "nats://user:secret@10.0.0.1:4222",
        "postgres://app:pw@db:5432/app",
        "sqlite://herald.db",
    ] {
        let doc = catalog.asyncapi(&Endpoints {
            gateway: Some(("bus.example.com:443".into(), true)),
            store: Some(store.into()),
        });
        assert_valid_asyncapi(&doc);
        assert!(!doc.to_string().contains("secret"), "{doc:#}");
        let operations = doc["operations"].as_object().unwrap();
        assert_eq!(operations.len(), 4, "{store}: {doc:#}");
        if store.starts_with("kafka") {
            assert_eq!(doc["servers"]["store"]["host"], "broker-1:9092");
            assert_eq!(
                doc["channels"]["orders.R"]["bindings"]["kafka"]["partitions"],
                3
            );
        }
        let op = &operations["billing_orders.R.receives.orders.R"];
        assert_eq!(op["x-herald-group"], "billing/orders.>", "{doc:#}");
    }
}

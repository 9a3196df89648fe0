//! A store's namespace from its URL or an options struct, without
//! process-wide `HERALD_*` variables (issue 22 item 16): a PostgreSQL
//! schema, a NATS subject prefix, a Kafka environment.

use std::time::{SystemTime, UNIX_EPOCH};

use herald::{Config, ErrorCode, Message};
use herald_store::{Store, StoreConfig, StoreOptions};

#[test]
fn each_store_reads_its_namespace_from_the_url_or_the_options() {
    let none = StoreOptions::default;
    let StoreConfig::Postgres(pg) =
        StoreConfig::from_url("postgres://h/db?sslmode=disable&schema=orders", none()).unwrap()
    else {
        panic!("a PostgreSQL config")
    };
    assert_eq!(pg.schema_name(), "orders");
    let StoreConfig::Nats(nats) =
        StoreConfig::from_url("nats://h:4222?prefix=orders.events", none()).unwrap()
    else {
        panic!("a NATS config")
    };
    assert_eq!(nats.subject_prefix(), "orders.events");
    let StoreConfig::Kafka(kafka) =
        StoreConfig::from_url("kafka://h:9092?environment=orders", none()).unwrap()
    else {
        panic!("a Kafka config")
    };
    assert_eq!(kafka.environment_name(), "orders");
    // The options win over the URL.
    let StoreConfig::Postgres(pg) =
        StoreConfig::from_url("postgres://h/db?schema=orders", none().namespace("billing"))
            .unwrap()
    else {
        panic!("a PostgreSQL config")
    };
    assert_eq!(pg.schema_name(), "billing");
    // A bad namespace is refused by the store's own rule, by name.
    let err = StoreConfig::from_url("postgres://h/db?schema=Bad-Name", none()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(err.to_string().contains("HERALD_PG_SCHEMA"), "{err}");
    // Stores without a namespace say so.
    for url in ["memory://", "sqlite://app.db"] {
        let err = StoreConfig::from_url(url, none().namespace("x")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation, "{url}");
        assert!(err.to_string().contains("namespace"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_url_with_a_schema_opens_that_schema() {
    let base = std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `ht_<unix time>_…` so the PostgreSQL tests' sweep drops it later.
    let schema = format!("ht_{now}_{:08x}", std::process::id());
    let sep = if base.contains('?') { '&' } else { '?' };
    let by_url = Store::open(&format!("{base}{sep}schema={schema}"))
        .await
        .unwrap();
    let bus = by_url.bus(Config::default()).unwrap();
    bus.publish(Message::json("ns.orders", &1).unwrap())
        .await
        .unwrap();
    let by_options = Store::open_with(&base, StoreOptions::default().namespace(&schema))
        .await
        .unwrap();
    let same = by_options.bus(Config::default()).unwrap();
    assert_eq!(same.last_seq("ns.orders").await.unwrap(), Some(1));
    let other = Store::open_with(
        &base,
        StoreOptions::default().namespace(format!("{schema}_b")),
    )
    .await
    .unwrap();
    let elsewhere = other.bus(Config::default()).unwrap();
    assert_eq!(elsewhere.last_seq("ns.orders").await.unwrap(), None);
    for store in [by_url, by_options, other] {
        store.close().await.unwrap();
    }
}

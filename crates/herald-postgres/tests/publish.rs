//! Publishing edge cases: an envelope repeated in one batch, and payloads
//! above the default limit when the bus allows them.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Config, Message, Payload, StartPosition};
use herald_postgres::PgStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_repeated_in_a_batch_gets_one_seq() {
    let config = support::fresh_config()
        .await
        .publish_timeout(Duration::from_secs(5));
    let store = PgStore::open(config).await.unwrap();
    let bus = Bus::new(store.clone());
    let env = bus
        .prepare(Message::json("rep.t", &1).unwrap())
        .unwrap()
        .remove(0);
    let seqs = bus.publish([env.clone(), env]).await.unwrap();
    assert_eq!(seqs, [1, 1]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_default_limit_are_sequenced_when_allowed() {
    let store = PgStore::open(support::fresh_config().await).await.unwrap();
    let bus = Bus::builder()
        .config(Config::default().max_payload_bytes(4 * 1024 * 1024))
        .transport(store.clone())
        .build()
        .unwrap();
    let mut sub = bus
        .subscribe_raw("big.t")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let big = vec![7u8; 2 * 1024 * 1024];
    let seqs = bus
        .publish(
            Message::new("big.t", Payload::bytes(big.clone()))
                .content_type("application/octet-stream"),
        )
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.payload().as_bytes(), &big[..]);
    assert!(bus.dead_letters().await.unwrap().is_empty());
    store.close().await;
}

/// A row written into the outbox by hand that is not an envelope is kept
/// as a dead letter (source `decode`), and the log goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_is_not_an_envelope_becomes_a_dead_letter() {
    let store = PgStore::open(support::fresh_config().await).await.unwrap();
    let bus = Bus::new(store.clone());
    sqlx::query(&format!(
        "INSERT INTO \"{}\".outbox (envelope_id, topic, idempotency_key, envelope)
         VALUES (gen_random_uuid(), 'junk.t', 'k', 'not json'::bytea)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    // Sequenced after the junk row, so once it has its seq the junk is done.
    assert_eq!(
        bus.publish(Message::json("ok.t", &1).unwrap())
            .await
            .unwrap(),
        [1]
    );
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].source, herald::FailureSource::Decode);
    assert_eq!(dead[0].envelope.payload().as_bytes(), b"not json");
    assert_eq!(dead[0].envelope.topic().as_str(), "junk.t");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_deduped_forever_with_a_unique_index() {
    let config = support::fresh_config().await;
    let schema = config.schema_name().to_owned();
    let open = |delivery: herald::config::DeliveryConfig| {
        let config = config.clone().delivery(delivery);
        async move { PgStore::open(config).await.map(Bus::new) }
    };
    let age = || {
        let schema = schema.clone();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&support::url()).await.unwrap();
            let sql = format!(
                "UPDATE {schema}.events SET appended_ms = appended_ms - 30 * 86400000::bigint"
            );
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
    };
    herald_conformance::limits::a_key_is_deduped_forever_on_a_sql_store(open, age).await;
}

//! `HERALD_DEAD_LETTERS` on NATS: a name puts the dead letters in a stream
//! of that name (`.` as `_`), and no default one is made.

mod support;

use herald::config::{DeadLetters, DeliveryConfig};
use herald::{Bus, ErrorCode, Message};
use herald_nats::NatsStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_destination_is_a_stream_of_that_name() {
    let unique = format!("herald-test.t{:016x}.dead", fastrand::u64(..));
    let stream = unique.replace('.', "_");
    let config = support::fresh_config();
    let named = DeliveryConfig::default().dead_letters(DeadLetters::Named(unique.clone()));
    let store = NatsStore::open(config.clone().delivery(named))
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let mut sub = bus.subscribe_raw("dlq.named").group("g").await.unwrap();
    bus.publish(Message::json("dlq.named", &1).unwrap())
        .await
        .unwrap();
    let d = herald_conformance::recv(&mut sub).await;
    d.term(ErrorCode::Validation, "poison").await.unwrap();
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "poison");

    let js = async_nats::jetstream::new(store.client().clone());
    let mut info = js.get_stream(&stream).await.expect("the named stream");
    assert_eq!(info.info().await.unwrap().state.messages, 1);
    let prefix = config.subject_prefix().replace('.', "_");
    assert!(
        js.get_stream(format!("{prefix}_DLQ")).await.is_err(),
        "no default dead-letter stream is made"
    );
    js.delete_stream(&stream).await.unwrap();
}

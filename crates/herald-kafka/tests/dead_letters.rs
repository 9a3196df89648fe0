//! `HERALD_DEAD_LETTERS` on Kafka: a name is the topic dead letters go to,
//! apart from the environment's `<environment>.dead_letters`.

mod support;

use herald::config::{DeadLetters, DeliveryConfig};
use herald::{Bus, ErrorCode, Message};
use herald_kafka::KafkaStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_destination_is_a_topic_of_that_name() {
    let config = support::fresh_config().partitions(1);
    let name = format!("{}-dead", config.kafka_topic("billing"));
    let named = DeliveryConfig::default().dead_letters(DeadLetters::Named(name.clone()));
    let named = config.clone().delivery(named);
    assert_eq!(named.dead_letter_topic(), name);
    let bus = Bus::new(KafkaStore::open(named).await.unwrap());
    let mut sub = bus.subscribe_raw("dlq.named").group("g").await.unwrap();
    bus.publish(Message::json("dlq.named", &1).unwrap())
        .await
        .unwrap();
    let d = herald_conformance::recv(&mut sub).await;
    d.term(ErrorCode::Validation, "poison").await.unwrap();
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "poison");
    let default = Bus::new(KafkaStore::open(config).await.unwrap());
    assert!(
        default.dead_letters().await.unwrap().is_empty(),
        "<environment>.dead_letters has none"
    );
}

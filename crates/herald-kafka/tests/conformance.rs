//! The whole conformance suite on Kafka (a `tansu` broker of the test
//! binary's own, or `HERALD_TEST_KAFKA_BROKERS`), each scenario in a fresh
//! environment. Topics herald creates here have one partition, so `seq` is
//! per topic, as the suite checks; `tests/partitions.rs` covers topics of
//! several partitions.

mod support;

use herald::Bus;
use herald_conformance::Restartable;
use herald_kafka::{KafkaConfig, KafkaStore};

async fn open(config: KafkaConfig) -> Bus {
    Bus::new(KafkaStore::open(config).await.expect("open a store"))
}

fn config() -> KafkaConfig {
    support::fresh_config().partitions(1)
}

async fn fresh_bus() -> Bus {
    open(config()).await
}

async fn with_delivery(delivery: herald::config::DeliveryConfig) -> Bus {
    open(config().delivery(delivery)).await
}

async fn restartable_bus() -> Restartable {
    let config = config();
    let bus = open(config.clone()).await;
    Restartable::new(bus, move || open(config.clone()))
}

herald_conformance::conformance_tests!(
    fresh_bus,
    configured = with_delivery,
    restart = restartable_bus,
    no_dead_letter_faults = "no test can make a Kafka dead-letter write fail: tansu creates a \
        deleted dead-letter topic again on the next write, and stopping the broker would stop \
        every other scenario's store (the rule itself, write then settle, is the queue's, \
        which the other stores' runs of this scenario check)",
);

//! The whole conformance suite on NATS JetStream, each scenario under a
//! fresh subject prefix. Topics herald makes here have one partition, so a
//! group reads each topic in `seq` order, as the suite checks of one
//! member; `tests/groups.rs` covers topics of several partitions shared by
//! processes (as Kafka's conformance run does with its partitions).

mod support;

use herald::{Bus, Topic};
use herald_conformance::{BreakableDeadLetters, Restartable};
use herald_nats::{NatsConfig, NatsStore};

async fn open(config: NatsConfig) -> Bus {
    Bus::new(NatsStore::open(config).await.expect("open a store"))
}

fn config() -> NatsConfig {
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

/// A bus whose store cannot write dead letters while its dead-letter
/// stream is taken away (deleted, then made again as it was).
async fn breakable_bus() -> BreakableDeadLetters {
    let store = NatsStore::open(config()).await.expect("open a store");
    let probe = Topic::new("x").expect("topic");
    let prefix = store
        .subject(&probe)
        .strip_suffix(".x")
        .expect("a topic's subject ends with it")
        .to_owned();
    let js = async_nats::jetstream::new(store.client().clone());
    let stream = js
        .stream_by_subject(format!("{prefix}.$dlq.x"))
        .await
        .expect("the dead-letter stream");
    let config = js
        .get_stream(&stream)
        .await
        .expect("the dead-letter stream")
        .cached_info()
        .config
        .clone();
    BreakableDeadLetters::new(Bus::new(store), move |broken| {
        let (js, stream, config) = (js.clone(), stream.clone(), config.clone());
        async move {
            if broken {
                js.delete_stream(&stream).await.expect("delete the stream");
            } else {
                js.create_stream(config)
                    .await
                    .expect("make the stream again");
            }
        }
    })
}

herald_conformance::conformance_tests!(
    fresh_bus,
    configured = with_delivery,
    restart = restartable_bus,
    dead_letter_faults = breakable_bus,
);

//! A group ordered per topic on topics of several partitions: refused
//! while keyless events spread over the partitions, kept when they go to
//! their topic's partition (`HERALD_KEYLESS_PARTITION=topic`).

mod support;

use herald::config::{DeliveryConfig, KeylessPartition};
use herald::Bus;
use herald_nats::NatsStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_order_needs_keyless_events_in_their_topics_partition() {
    let config = support::fresh_config().partitions(3);
    let spread = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let by_topic =
        config.delivery(DeliveryConfig::default().keyless_partition(KeylessPartition::Topic));
    let by_topic = Bus::new(NatsStore::open(by_topic).await.unwrap());
    herald_conformance::handlers::per_topic_order_on_partitioned_topics(&spread, &by_topic).await;
    spread.close().await.unwrap();
    by_topic.close().await.unwrap();
}

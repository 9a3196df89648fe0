//! herald's own Kafka topics — `<environment>._schemas` (the contracts)
//! and `<environment>._groups` (each group's record and mark) — are made
//! compacted, so the latest record of each key outlives the brokers'
//! retention: a registry or a group does not vanish after a week.

mod support;

use herald::Bus;
use herald_kafka::KafkaStore;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// Topic `name`'s `cleanup.policy`, as the brokers describe it.
async fn cleanup_policy(name: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .create()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_and_group_topics_are_compacted() {
    let config = support::fresh_config();
    let bus = Bus::new(KafkaStore::open(config.clone()).await.unwrap());
    let schema = serde_json::json!({"type": "object"});
    bus.schemas()
        .register("internal.orders", schema)
        .await
        .unwrap();
    let _member = bus
        .subscribe_raw("internal.orders")
        .group("internal")
        .await
        .unwrap();
    for topic in ["_schemas", "_groups"] {
        let name = config.kafka_topic(topic);
        assert_eq!(
            cleanup_policy(&name).await.as_deref(),
            Some("compact"),
            "{name}"
        );
    }
    bus.close().await.unwrap();
}

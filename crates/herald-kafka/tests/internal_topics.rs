//! herald's own Kafka topics — `<environment>._schemas` (the contracts)
//! and `<environment>._groups` (each group's record and mark) — are made
//! compacted, so the latest record of each key outlives the brokers'
//! retention: a registry or a group does not vanish after a week. Every
//! topic herald makes carries the replication settings it is given.

mod support;

use herald::Bus;
use herald_kafka::KafkaStore;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// Topic `name`'s `cleanup.policy`, as the brokers describe it.
async fn cleanup_policy(name: &str) -> Option<String> {
    topic_config(name, "cleanup.policy").await
}

/// Topic `name`'s setting `key`, as the brokers describe it.
async fn topic_config(name: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .create()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    resource.get(key).and_then(|entry| entry.value.clone())
}

/// `HERALD_KAFKA_MIN_INSYNC_REPLICAS` is set on the topics herald makes,
/// its own and the events'. Against a cluster (`HERALD_TEST_KAFKA_BROKERS`)
/// with three replicas, as production would; on one tansu broker, which
/// neither replicates nor enforces the setting, with the brokers'
/// replication and a value no broker defaults to, so the test fails when
/// herald does not pass it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_made_with_the_replication_settings() {
    let mut config = support::fresh_config();
    let in_sync = if support::on_tansu() {
        7
    } else {
        config = config.replication_factor(3);
        2
    };
    let config = config.min_insync_replicas(in_sync);
    let bus = Bus::new(KafkaStore::open(config.clone()).await.unwrap());
    bus.publish(herald::Message::new(
        "replicated.orders",
        herald::Payload::null(),
    ))
    .await
    .unwrap();
    let _member = bus
        .subscribe_raw("replicated.orders")
        .group("replicated")
        .await
        .unwrap();
    for topic in ["replicated.orders", "_groups"] {
        let name = config.kafka_topic(topic);
        assert_eq!(
            topic_config(&name, "min.insync.replicas").await,
            Some(in_sync.to_string()),
            "{name}"
        );
    }
    bus.close().await.unwrap();
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

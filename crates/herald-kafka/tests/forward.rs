//! The outbox forwarder moves a SQLite store's events to Kafka at least
//! once, ids and idempotency keys preserved, so the Kafka store drops the
//! copies that lost acks cause: the Kafka topic ends with every event once,
//! each key's events in order, each with its source idempotency key.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use herald::forward::Forwarder;
use herald::testing::Faults;
use herald::{Bus, Message, StartPosition, Topic};
use herald_kafka::KafkaStore;
use herald_sqlite::{SqliteConfig, SqliteStore};

const TOPIC: &str = "fwd.orders";
const N: u64 = 200;
const KEYS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_reach_kafka_once_with_their_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let source_store = SqliteStore::open(SqliteConfig::new(dir.path().join("source.db")))
        .await
        .unwrap();
    let source = Bus::new(source_store);
    let kafka = KafkaStore::open(support::fresh_config()).await.unwrap();
    // One partition: the topic's seq counts its events.
    kafka
        .create_topic(&Topic::new(TOPIC).unwrap(), 1)
        .await
        .unwrap();
    let target = Bus::new(kafka);

    let batch: Vec<Message> = (0..N)
        .map(|n| {
            Message::json(TOPIC, &n)
                .unwrap()
                .key(format!("customer-{}", n % KEYS))
                .idempotency_key(format!("order-{n}"))
        })
        .collect();
    source.publish(batch).await.unwrap();

    let faults = Faults::new();
    faults.lose_acks(20);
    let forwarding = Forwarder::new(&faults.wrap_bus(&source), &target)
        .topics("fwd.>")
        .ack_wait(Duration::from_millis(500))
        .retry_after(Duration::from_millis(50))
        .run()
        .await
        .unwrap();
    // Every event there, and copies sent (lost acks bring events again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while target.last_seq(TOPIC).await.unwrap() != Some(N) || forwarding.forwarded() <= N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target has {:?} of {N}; {} forwarded",
            target.last_seq(TOPIC).await.unwrap(),
            forwarding.forwarded()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forwarding.shutdown(Duration::from_secs(5)).await;

    assert_eq!(target.last_seq(TOPIC).await.unwrap(), Some(N), "no copies");
    let events = target
        .replay(TOPIC, StartPosition::Earliest, 1000)
        .await
        .unwrap();
    assert_eq!(events.len() as u64, N);
    let mut last_of_key: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let n: u64 = e.decode().unwrap();
        assert_eq!(e.idempotency_key(), format!("order-{n}"));
        let key = e.key().unwrap().to_owned();
        if let Some(before) = last_of_key.insert(key.clone(), n) {
            assert!(before < n, "{key}: {n} arrived after {before}");
        }
    }
    let mut numbers: Vec<u64> = events.iter().map(|e| e.decode().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..N).collect::<Vec<_>>());
}

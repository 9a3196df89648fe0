//! The forwarder moves the PostgreSQL outbox to another transport (a SQLite
//! store here) at least once, ids and idempotency keys preserved so the
//! target drops the copies: through lost acks, a target outage and a
//! restart of the source, the target ends with every event once, each key's
//! events in order.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use herald::forward::Forwarder;
use herald::testing::Faults;
use herald::{Bus, ErrorCode, Message, StartPosition};
use herald_postgres::PgStore;
use herald_sqlite::{SqliteConfig, SqliteStore};

const TOPIC: &str = "orders.placed";
const KEYS: u64 = 5;

/// Publish `range` through the outbox, in one transaction of "our own".
async fn publish(store: &PgStore, bus: &Bus, range: std::ops::Range<u64>) {
    let mut tx = store.pool().begin().await.unwrap();
    let batch: Vec<Message> = range
        .map(|n| {
            Message::json(TOPIC, &n)
                .unwrap()
                .key(format!("customer-{}", n % KEYS))
        })
        .collect();
    store
        .publish_in(&mut tx, bus.prepare(batch).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn wait_for(target: &Bus, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while target.last_seq(TOPIC).await.unwrap() != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target has {:?} of {n} events",
            target.last_seq(TOPIC).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_reaches_another_transport_once_through_faults_and_restarts() {
    let config = support::fresh_config().await;
    let dir = tempfile::tempdir().unwrap();
    let target_store = SqliteStore::open(SqliteConfig::new(dir.path().join("target.db")))
        .await
        .unwrap();
    let target_faults = Faults::new();
    let target = target_faults.wrap_bus(&Bus::new(target_store.clone()));

    let store = PgStore::open(config.clone()).await.unwrap();
    let source = Bus::new(store.clone());
    let source_faults = Faults::new();
    let forwarder = |source: &Bus| {
        Forwarder::new(&source_faults.wrap_bus(source), &target)
            .topics("orders.>")
            .ack_wait(Duration::from_millis(500))
            .retry_after(Duration::from_millis(50))
    };

    // Lost acks: those events come again and are forwarded again.
    source_faults.lose_acks(10);
    publish(&store, &source, 0..100).await;
    let forwarding = forwarder(&source).run().await.unwrap();
    wait_for(&target, 100).await;

    // A target outage: publishes fail for a while, the breaker opens.
    target_faults.fail_publishes(8, ErrorCode::Unavailable);
    publish(&store, &source, 100..200).await;
    wait_for(&target, 200).await;
    let copies = forwarding.forwarded();
    forwarding.shutdown(Duration::from_secs(5)).await;

    // The source restarts: a new process resumes the group.
    store.close().await;
    let store = PgStore::open(config).await.unwrap();
    let source = Bus::new(store.clone());
    publish(&store, &source, 200..300).await;
    let forwarding = forwarder(&source).run().await.unwrap();
    wait_for(&target, 300).await;
    forwarding.shutdown(Duration::from_secs(5)).await;

    assert!(copies > 200, "lost acks forwarded copies: {copies}");
    let events = target_store
        .replay(TOPIC, StartPosition::Earliest, 1000)
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        300,
        "each event once: the target dropped the copies"
    );
    let mut last_of_key: HashMap<String, u64> = HashMap::new();
    let mut numbers = Vec::new();
    for e in &events {
        let n: u64 = e.decode().unwrap();
        let key = e.key().unwrap().to_owned();
        if let Some(before) = last_of_key.insert(key.clone(), n) {
            assert!(before < n, "{key}: {n} arrived after {before}");
        }
        numbers.push(n);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (0..300).collect::<Vec<_>>());
    println!("forward: 300 events reached the target once; {copies} publishes before the restart");
}

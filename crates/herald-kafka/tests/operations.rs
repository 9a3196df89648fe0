//! What an operator sees of a Kafka store: rebalances told to watchers,
//! consumer lag per group and partition as gauges, topics with their
//! partitions, groups with their standing per partition, and topics made
//! and removed by hand.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, StartPosition, Topic};
use herald_kafka::rebalance::CONSUMER_LAG;
use herald_kafka::{KafkaStore, RebalanceKind, Rebalanced};

/// The lag gauges of `group` on `topic`, by partition.
fn lags(bus: &Bus, group: &str, topic: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = bus
        .metrics()
        .gauges()
        .into_iter()
        .filter(|g| g.name() == CONSUMER_LAG)
        .filter(|g| {
            let l = g.labels();
            l.iter().any(|(k, v)| k == "group" && v == group)
                && l.iter().any(|(k, v)| k == "topic" && v == topic)
        })
        .map(|g| {
            let p = g
                .labels()
                .iter()
                .find(|(k, _)| k == "partition")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (p, g.get())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Wait (up to 30 s) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_are_told_and_lag_is_a_gauge_per_partition() {
    let store = KafkaStore::open(support::fresh_config().partitions(3))
        .await
        .unwrap();
    let (tx, mut told) = tokio::sync::mpsc::unbounded_channel::<Rebalanced>();
    store.on_rebalance(move |r| {
        let _ = tx.send(r.clone());
    });
    let bus = Bus::new(store.clone());
    let topic = "ops.orders";
    let batch: Vec<Message> = (0..30u64)
        .map(|n| Message::json(topic, &n).unwrap().key(format!("k{n}")))
        .collect();
    bus.publish(batch).await.unwrap();

    let mut sub = bus
        .subscribe_raw(topic)
        .group("ops")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let assigned = tokio::time::timeout(Duration::from_secs(30), told.recv())
        .await
        .expect("a rebalance was told")
        .unwrap();
    assert_eq!(assigned.group, "ops");
    assert_eq!(assigned.kind, RebalanceKind::Assigned);
    let name = format!("{}.{topic}", store.config().environment_name());
    let mut parts: Vec<i32> = assigned
        .partitions
        .iter()
        .filter(|(t, _)| *t == name)
        .map(|(_, p)| *p)
        .collect();
    parts.sort_unstable();
    assert_eq!(
        parts,
        vec![0, 1, 2],
        "all three partitions to the only member"
    );

    // Nothing acked: each partition lags by what it holds, 30 in all.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(sub.next().await.unwrap().unwrap());
    }
    until("the lag gauges sum to 30", || {
        let l = lags(&bus, "ops", topic);
        l.len() == 3 && l.iter().map(|(_, v)| v).sum::<f64>() == 30.0
    })
    .await;
    let groups = bus.groups().await.unwrap();
    let ops = groups.iter().find(|g| g.name == "ops").unwrap();
    let standing = &ops.topics[0];
    assert_eq!(standing.partitions.len(), 3);
    assert_eq!(
        standing.partitions.iter().map(|p| p.last_seq).sum::<u64>(),
        30
    );
    assert_eq!(standing.lag, 30);

    for d in held {
        d.ack().await.unwrap();
    }
    until("the lag gauges fall to 0", || {
        lags(&bus, "ops", topic).iter().all(|(_, v)| *v == 0.0)
    })
    .await;
    let groups = bus.groups().await.unwrap();
    let ops = groups.iter().find(|g| g.name == "ops").unwrap();
    assert_eq!(ops.lag(), 0);
    assert!(ops.topics[0].partitions.iter().all(|p| p.lag == 0));
    let topics = bus.topics().await.unwrap();
    let info = topics.iter().find(|t| t.topic.as_str() == topic).unwrap();
    assert_eq!(info.partitions, 3);

    // Leaving the group gives the partitions up.
    drop(sub);
    store.close().await;
    let revoked = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = told.recv().await.expect("told of the revocation");
            if r.kind == RebalanceKind::Revoked {
                return r;
            }
        }
    })
    .await
    .expect("a revocation was told");
    assert_eq!(revoked.group, "ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_made_with_a_partition_count_and_removed() {
    let store = KafkaStore::open(support::fresh_config()).await.unwrap();
    let bus = Bus::new(store.clone());
    let topic = Topic::new("ops.made").unwrap();
    let err = store.create_topic(&topic, 0).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    store.create_topic(&topic, 5).await.unwrap();
    store.create_topic(&topic, 5).await.unwrap();
    bus.publish(Message::json("ops.made", &1).unwrap().key("a"))
        .await
        .unwrap();
    let info = bus.topics().await.unwrap();
    let made = info.iter().find(|t| t.topic == topic).unwrap();
    assert_eq!(made.partitions, 5);

    store.delete_topic(&topic).await.unwrap();
    until_async_gone(&bus, &topic).await;
    let err = store.delete_topic(&topic).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
}

async fn until_async_gone(bus: &Bus, topic: &Topic) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bus
        .topics()
        .await
        .unwrap()
        .iter()
        .any(|t| &t.topic == topic)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

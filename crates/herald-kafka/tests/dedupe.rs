//! Idempotency keys on Kafka: a key published again while its first
//! publish is still on its way to the brokers is the same record, not a
//! second one. A handler whose ack wait runs out while its effects are
//! being published runs again at once and publishes the same effects (same
//! keys) a second time, before the first publish has its delivery reports:
//! each effect must still exist once.

mod support;

use futures_util::future::join_all;
use herald::{Bus, Message};
use herald_kafka::KafkaStore;

/// Publishes of one key under way together.
const AT_ONCE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_published_again_while_in_flight_is_one_record() {
    let store = KafkaStore::open(support::fresh_config().partitions(1))
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    // First on a topic the publishes make (they wait for it together), then
    // on one that exists (they wait for their delivery reports together).
    for (round, key) in ["effect-a", "effect-b"].into_iter().enumerate() {
        let publishes = (0..AT_ONCE).map(|n| {
            let bus = bus.clone();
            async move {
                let msg = Message::json("dedupe.effects", &n)
                    .unwrap()
                    .idempotency_key(key);
                bus.publish(msg).await.unwrap()[0]
            }
        });
        let seqs = join_all(publishes).await;
        let first = seqs[0];
        assert!(
            seqs.iter().all(|s| *s == first),
            "round {round}: one key, one seq: {seqs:?}"
        );
        assert_eq!(first, round as u64 + 1, "round {round}: {seqs:?}");
        assert_eq!(
            bus.last_seq("dedupe.effects").await.unwrap(),
            Some(round as u64 + 1),
            "round {round}: one record per key"
        );
    }
    // A batch naming a key twice, one of them in flight elsewhere: still
    // one record per key.
    let one = || {
        Message::json("dedupe.effects", &0)
            .unwrap()
            .idempotency_key("effect-c")
    };
    let two = || {
        Message::json("dedupe.effects", &1)
            .unwrap()
            .idempotency_key("effect-d")
    };
    let (a, b) = tokio::join!(
        bus.publish(vec![one(), two(), one()]),
        bus.publish(vec![two(), one()])
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a[0], a[2], "{a:?}");
    assert_eq!((b[0], b[1]), (a[1], a[0]), "{a:?} {b:?}");
    assert_eq!(bus.last_seq("dedupe.effects").await.unwrap(), Some(4));
    bus.close().await.unwrap();
}

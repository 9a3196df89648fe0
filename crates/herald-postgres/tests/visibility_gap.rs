//! The outbox visibility gap: 50 transactions publish 200 events each to
//! one topic through the outbox, concurrently, committing in a random
//! order after random delays, a fifth of them rolling back. A subscriber
//! reading all along must see exactly the committed events, each once, in
//! `seq` order, with no gap — it never passes a `seq` that a late commit
//! would fill in.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};

const TRANSACTIONS: u64 = 50;
const EACH: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commits_are_never_skipped_and_rollbacks_never_appear() {
    let store = herald_postgres::PgStore::open(support::fresh_config().await.pool_size(64))
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let mut sub = bus
        .subscribe_raw("gap.orders")
        .ephemeral()
        .start(StartPosition::Earliest)
        .buffer(100_000)
        .await
        .unwrap();
    let started = std::sync::Arc::new(tokio::sync::Barrier::new(TRANSACTIONS as usize));
    let mut writers = Vec::new();
    for t in 0..TRANSACTIONS {
        let (store, bus, started) = (store.clone(), bus.clone(), started.clone());
        writers.push(tokio::spawn(async move {
            let mut tx = store.pool().begin().await.unwrap();
            let batch: Vec<_> = (0..EACH)
                .map(|i| Message::json("gap.orders", &serde_json::json!([t, i])).unwrap())
                .collect();
            store
                .publish_in(&mut tx, bus.prepare(batch).unwrap())
                .await
                .unwrap();
            // Every transaction has written before any commits, so they
            // commit in the order of their random delays, not of their start.
            started.wait().await;
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
            let commit = fastrand::u8(0..5) != 0;
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            (t, commit)
        }));
    }
    let mut committed = HashSet::new();
    for w in writers {
        let (t, commit) = w.await.unwrap();
        if commit {
            committed.insert(t);
        }
    }
    let expected = committed.len() as u64 * EACH;
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    while (seen.len() as u64) < expected {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("every committed event arrives")
            .unwrap()
            .unwrap();
        let seq = d.seq().unwrap();
        assert_eq!(
            seq,
            last_seq + 1,
            "seq {seq} after {last_seq}: a gap or a reorder"
        );
        last_seq = seq;
        let [t, i]: [u64; 2] = d.decode().unwrap();
        assert!(
            committed.contains(&t),
            "an event of rolled-back transaction {t} appeared"
        );
        assert!(seen.insert((t, i)), "({t}, {i}) delivered twice");
        d.ack().await.unwrap();
    }
    assert_eq!(
        store
            .last_seq(&"gap.orders".parse().unwrap())
            .await
            .unwrap(),
        Some(expected)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing beyond the committed events"
    );
    store.close().await;
}

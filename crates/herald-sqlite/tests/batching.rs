//! The bus's auto-batching on the SQLite store: concurrent publishes share
//! appends, every caller gets its own seqs, and topics stay gap-free.

use std::time::Duration;

use herald::publisher::Batching;
use herald::testing::Faults;
use herald::{Bus, Message};
use herald_sqlite::{SqliteConfig, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_appends_and_keep_seqs_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("b.db")))
        .await
        .unwrap();
    let faults = Faults::new();
    let bus = Bus::builder()
        .transport(faults.wrap(store.clone()))
        .batching(Batching::default().max_wait(Duration::from_millis(5)))
        .build()
        .unwrap();
    let publishes: Vec<_> = (0..400u64)
        .map(|i| {
            let bus = bus.clone();
            let topic = if i % 2 == 0 { "batch.a" } else { "batch.b" };
            tokio::spawn(
                async move { (topic, bus.publish(Message::json(topic, &i).unwrap()).await) },
            )
        })
        .collect();
    let mut a = Vec::new();
    let mut b = Vec::new();
    for p in publishes {
        let (topic, seqs) = p.await.unwrap();
        let seqs = seqs.unwrap();
        assert_eq!(seqs.len(), 1);
        if topic == "batch.a" {
            a.push(seqs[0])
        } else {
            b.push(seqs[0])
        }
    }
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, (1..=200).collect::<Vec<_>>());
    assert_eq!(b, (1..=200).collect::<Vec<_>>());
    assert!(
        faults.publishes() < 400,
        "{} appends for 400 publishes",
        faults.publishes()
    );
    assert_eq!(
        store.last_seq(&"batch.a".parse().unwrap()).await.unwrap(),
        Some(200)
    );
}

//! The outbox: events published inside the caller's transaction exist iff
//! it commits, and subscribers get them right after the commit.

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition, Topic};
use herald_sqlite::{SqliteConfig, SqliteStore};
use sqlx::Connection;

async fn setup() -> (tempfile::TempDir, SqliteStore, Bus) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("app.db")))
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let mut tx = store.begin().await.unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (dir, store, bus)
}

async fn orders(store: &SqliteStore) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_and_events_appear_together_and_wake_subscribers() {
    let (_dir, store, bus) = setup().await;
    let mut live = bus
        .subscribe_raw("orders.placed")
        .ephemeral()
        .await
        .unwrap();
    let mut group = bus
        .subscribe_raw("orders.placed")
        .group("mailer")
        .await
        .unwrap();

    let mut tx = store.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seqs = tx
        .publish(
            bus.prepare(Message::json("orders.placed", &1).unwrap())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    tx.commit().await.unwrap();

    assert_eq!(orders(&store).await, 1);
    for sub in [&mut live, &mut group] {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.decode::<u32>().unwrap(), 1);
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn rolled_back_or_dropped_transactions_leave_nothing_and_no_seq_hole() {
    let (_dir, store, bus) = setup().await;
    let mut tx = store.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.publish(
        bus.prepare(Message::json("orders.placed", &1).unwrap())
            .unwrap(),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.publish(
        bus.prepare(Message::json("orders.placed", &2).unwrap())
            .unwrap(),
    )
    .await
    .unwrap();
    drop(tx);

    assert_eq!(orders(&store).await, 0);
    let topic = Topic::new("orders.placed").unwrap();
    assert_eq!(store.last_seq(&topic).await.unwrap(), None);
    assert_eq!(
        bus.publish(Message::json("orders.placed", &3).unwrap())
            .await
            .unwrap(),
        [1],
        "no hole"
    );
    let all = store
        .replay("orders.placed", StartPosition::Earliest, 10)
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .map(|e| e.decode::<u32>().unwrap())
            .collect::<Vec<_>>(),
        [3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_a_transaction_of_the_callers_own_pool() {
    let (dir, store, bus) = setup().await;
    let mut sub = bus
        .subscribe_raw("orders.placed")
        .ephemeral()
        .await
        .unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("app.db"));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (5)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seqs = store
        .publish_in(
            &mut tx,
            bus.prepare(Message::json("orders.placed", &5).unwrap())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    tx.commit().await.unwrap();
    store.wake().await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.decode::<u32>().unwrap(), 5);
    assert_eq!(orders(&store).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_and_plain_publishes_share_a_gap_free_sequence() {
    let (_dir, store, bus) = setup().await;
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let (store, bus) = (store.clone(), bus.clone());
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25u32 {
                    let msg = Message::json("orders.placed", &(t * 100 + i)).unwrap();
                    if i % 2 == 0 {
                        let mut tx = store.begin().await.unwrap();
                        seqs.extend(tx.publish(bus.prepare(msg).unwrap()).await.unwrap());
                        if i % 4 == 0 {
                            tx.commit().await.unwrap();
                        } else {
                            tx.rollback().await.unwrap();
                            seqs.pop();
                        }
                    } else {
                        seqs.extend(bus.publish(msg).await.unwrap());
                    }
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "committed seqs are 1..=n with no gap"
    );
    let stored = store
        .replay("orders.placed", StartPosition::Earliest, 10_000)
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, n);
}

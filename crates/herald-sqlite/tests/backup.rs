//! An online backup (issue 22 item 9): taken while a publisher keeps
//! writing, the copy opens as a store of its own with every event up to
//! its last `seq`, each group where it was and every dead letter
//! (`herald_conformance::kept`); and what is not a backup's to do is
//! refused.

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, StartPosition};
use herald_sqlite::{SqliteConfig, SqliteStore};

async fn open(path: &std::path::Path) -> (SqliteStore, Bus) {
    let store = SqliteStore::open(SqliteConfig::new(path)).await.unwrap();
    let bus = Bus::new(store.clone());
    (store, bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_events_groups_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let (path, copy) = (dir.path().join("app.db"), dir.path().join("copy.db"));
    let (store, bus) = open(&path).await;
    let history = herald_conformance::kept::write(&bus).await;
    // A publisher keeps writing while the copy is taken.
    let writer = tokio::spawn({
        let bus = bus.clone();
        async move {
            for n in 1..=300u64 {
                bus.publish(Message::json("orders.placed", &n).unwrap())
                    .await
                    .unwrap();
            }
        }
    });
    let written = herald_sqlite::backup(&path, &copy).await.unwrap();
    assert!(written.pages > 0 && written.bytes > 0, "{written:?}");
    writer.await.unwrap();
    store.close().await;

    let (restored, bus) = open(&copy).await;
    let last = bus.last_seq("orders.placed").await.unwrap().unwrap_or(0);
    assert!(last <= 300, "last seq {last}");
    let mut all = bus
        .subscribe_raw("orders.placed")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    for seq in 1..=last {
        let d = tokio::time::timeout(Duration::from_secs(30), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((d.seq(), d.decode::<u64>().unwrap()), (Some(seq), seq));
        d.ack().await.unwrap();
    }
    history.check(&bus).await;
    restored.close().await;
}

#[tokio::test]
async fn a_backup_refuses_to_overwrite_to_invent_or_to_copy_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (store, _bus) = open(&path).await;
    let taken = dir.path().join("taken.db");
    std::fs::write(&taken, b"precious").unwrap();
    let err = herald_sqlite::backup(&path, &taken).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Duplicate);
    assert_eq!(std::fs::read(&taken).unwrap(), b"precious");

    let missing = dir.path().join("missing.db");
    let err = herald_sqlite::backup(&missing, dir.path().join("out.db"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(!missing.exists(), "a wrong path is not made a store");

    let stranger = dir.path().join("stranger.db");
    rusqlite::Connection::open(&stranger)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let err = herald_sqlite::backup(&stranger, dir.path().join("out2.db"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(!dir.path().join("out2.db").exists());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_member_held_when_the_copy_was_taken_comes_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (path, copy) = (dir.path().join("app.db"), dir.path().join("copy.db"));
    let (store, bus) = open(&path).await;
    let mut holder = bus
        .subscribe_raw("jobs")
        .group("workers")
        .ack_wait(Duration::from_secs(3600))
        .await
        .unwrap();
    bus.publish(Message::json("jobs", &1).unwrap())
        .await
        .unwrap();
    let held = holder.next().await.unwrap().unwrap();
    herald_sqlite::backup(&path, &copy).await.unwrap();
    drop(held);
    store.close().await;

    let (restored, bus) = open(&copy).await;
    let mut worker = bus.subscribe_raw("jobs").group("workers").await.unwrap();
    // Its lease had an hour to run: only the release lets it come now.
    let again = tokio::time::timeout(Duration::from_secs(30), worker.next())
        .await
        .expect("released by the backup, not by the lease's end")
        .unwrap()
        .unwrap();
    assert_eq!((again.seq(), again.attempt()), (Some(1), 2));
    again.ack().await.unwrap();
    restored.close().await;
}

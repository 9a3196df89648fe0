//! The event log: durability across reopen, sequencing across tasks and
//! stores, dedupe, replay, and bad store paths.

use std::sync::Arc;
use std::time::Duration;

use herald::{Envelope, ErrorCode, Message, Payload, Publish, StartPosition, Topic};
use herald_sqlite::{SqliteConfig, SqliteStore, SCHEMA_VERSION};

fn event(topic: &str, n: u64) -> Envelope {
    Message::new(topic.to_string(), Payload::json(&n).unwrap())
        .into_envelope(&Arc::from("test"))
        .unwrap()
}

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(dir.path().join("events.db")))
        .await
        .unwrap()
}

#[tokio::test]
async fn events_survive_reopen_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(
        store
            .append(vec![event("a", 1), event("a", 2)])
            .await
            .unwrap(),
        [1, 2]
    );
    drop(store);
    let store = open(&dir).await;
    assert_eq!(
        store.last_seq(&Topic::new("a").unwrap()).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.append(vec![event("a", 3)]).await.unwrap(), [3]);
    let all = store
        .replay("a", StartPosition::Earliest, 100)
        .await
        .unwrap();
    let got: Vec<(Option<u64>, u64)> = all.iter().map(|e| (e.seq(), e.decode().unwrap())).collect();
    assert_eq!(got, [(Some(1), 1), (Some(2), 2), (Some(3), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_gap_free_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let tasks: Vec<_> = (0..50u64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..40u64 {
                    let topic = if i % 2 == 0 { "even" } else { "odd" };
                    seqs.push((
                        topic,
                        store.append(vec![event(topic, t * 100 + i)]).await.unwrap()[0],
                    ));
                }
                seqs
            })
        })
        .collect();
    let mut even = Vec::new();
    let mut odd = Vec::new();
    for t in tasks {
        for (topic, seq) in t.await.unwrap() {
            if topic == "even" {
                even.push(seq)
            } else {
                odd.push(seq)
            }
        }
    }
    even.sort_unstable();
    odd.sort_unstable();
    assert_eq!(even, (1..=1000).collect::<Vec<_>>());
    assert_eq!(odd, (1..=1000).collect::<Vec<_>>());
    let stored: Vec<u64> = store
        .replay("even", StartPosition::Earliest, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq().unwrap())
        .collect();
    assert_eq!(stored, (1..=1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir).await;
    let b = open(&dir).await;
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..200 {
                    seqs.extend(store.append(vec![event("shared", i)]).await.unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    assert_eq!(
        b.last_seq(&Topic::new("shared").unwrap()).await.unwrap(),
        Some(400)
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_original_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let keyed = |n| {
        Message::new("orders", Payload::json(&n).unwrap())
            .idempotency_key("order-1")
            .into_envelope(&Arc::from("test"))
            .unwrap()
    };
    assert_eq!(store.append(vec![keyed(1)]).await.unwrap(), [1]);
    assert_eq!(store.append(vec![event("orders", 2)]).await.unwrap(), [2]);
    assert_eq!(
        store.append(vec![keyed(3), keyed(4)]).await.unwrap(),
        [1, 1]
    );
    let again = event("orders", 5);
    let first = store.append(vec![again.clone()]).await.unwrap();
    assert_eq!(
        store.append(vec![again]).await.unwrap(),
        first,
        "a re-published envelope keeps its id"
    );
    assert_eq!(
        store
            .replay("orders", StartPosition::Earliest, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_zero_dedupe_window_turns_dedupe_off() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(SqliteConfig::new(dir.path().join("e.db")).dedupe_window(Duration::ZERO))
            .await
            .unwrap();
    let e = event("t", 1);
    assert_eq!(store.append(vec![e.clone()]).await.unwrap(), [1]);
    assert_eq!(store.append(vec![e]).await.unwrap(), [2]);
}

#[tokio::test]
async fn replay_pages_by_seq_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let first: Vec<Envelope> = (1..=5).map(|i| event("r", i)).collect();
    store.append(first).await.unwrap();
    let cut =
        chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis() + 1).unwrap();
    while chrono::Utc::now() < cut {
        tokio::task::yield_now().await;
    }
    store
        .append((6..=8).map(|i| event("r", i)).collect())
        .await
        .unwrap();
    let page = store.replay("r", StartPosition::Seq(3), 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq().unwrap()).collect::<Vec<_>>(),
        [3, 4]
    );
    let next = store.replay("r", StartPosition::Seq(5), 100).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.seq().unwrap()).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    let since = store
        .replay("r", StartPosition::Time(cut), 100)
        .await
        .unwrap();
    assert_eq!(
        since.iter().map(|e| e.seq().unwrap()).collect::<Vec<_>>(),
        [6, 7, 8]
    );
    assert!(store
        .replay("r", StartPosition::Latest, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .replay("Bad", StartPosition::Earliest, 1)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Validation
    );
}

#[tokio::test]
async fn stored_envelopes_keep_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let env = Message::new(
        "full",
        Payload::json(&serde_json::json!({"a": [1, 2]})).unwrap(),
    )
    .key("k")
    .header("traceparent", "00-abc")
    .priority(herald::Priority::High)
    .into_envelope(&Arc::from("svc"))
    .unwrap();
    store.append(vec![env.clone()]).await.unwrap();
    let back = store
        .replay("full", StartPosition::Earliest, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(back, env.with_seq(1));
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    let junk = b"this is not an SQLite file, just some text that is long enough".repeat(100);
    std::fs::write(&path, &junk).unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(
        err.message().contains(&path.display().to_string()),
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        junk,
        "the file is left alone"
    );
}

#[tokio::test]
async fn a_corrupt_database_is_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    // The right magic, then a header and pages of garbage.
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.resize(8192, 0xAB);
    std::fs::write(&path, &bytes).unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{}", err.message());
    assert!(err.message().contains(&path.display().to_string()));
}

#[tokio::test]
async fn missing_directories_directories_and_read_only_places_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("events.db");
    let err = SqliteStore::open(SqliteConfig::new(&missing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(
        err.message().contains("does not exist"),
        "{}",
        err.message()
    );

    let err = SqliteStore::open(SqliteConfig::new(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(
        err.message().contains("is a directory"),
        "{}",
        err.message()
    );

    // /proc is read-only even for root.
    let err = SqliteStore::open(SqliteConfig::new("/proc/herald-test.db"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{}", err.message());
    assert!(err.message().contains("/proc/herald-test.db"));
}

#[tokio::test]
async fn a_store_written_by_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
    {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::query("UPDATE herald_meta SET value = ? WHERE key = 'schema_version'")
            .bind(SCHEMA_VERSION + 1)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let err = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(err.message().contains("newer herald"), "{}", err.message());
}

#[tokio::test]
async fn a_closed_store_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.close().await;
    assert_eq!(
        store.append(vec![event("t", 1)]).await.unwrap_err().code(),
        ErrorCode::Unavailable
    );
}

#[test]
fn settings_are_range_checked_by_name() {
    let err = SqliteConfig::new("x.db")
        .group_commit_max(0)
        .validate()
        .unwrap_err();
    assert!(err.message().contains("group_commit_max"));
    let err = SqliteConfig::new("").validate().unwrap_err();
    assert!(err.message().contains("HERALD_STORE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_deduped_forever_with_a_unique_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forever.db");
    let open = |delivery: herald::config::DeliveryConfig| {
        let config = SqliteConfig::new(&path).delivery(delivery);
        async move { SqliteStore::open(config).await.map(herald::Bus::new) }
    };
    let url = format!("sqlite://{}", path.display());
    let age = || {
        let url = url.clone();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("UPDATE events SET appended_ms = appended_ms - 30 * 86400000")
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };
    herald_conformance::limits::a_key_is_deduped_forever_on_a_sql_store(open, age).await;
}

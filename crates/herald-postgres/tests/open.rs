//! Opening the store: bad configuration and unreachable servers get clear
//! errors with stable codes; a schema from a newer herald is refused;
//! opening twice (two processes) migrates once and shares the log.

mod support;

use herald::ErrorCode;
use herald_postgres::{PgConfig, PgStore, SCHEMA_VERSION};

#[tokio::test]
async fn a_malformed_url_is_validation_and_hides_the_password() {
    let err = PgStore::open(PgConfig::new("postgres://app:secret@[bad"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = PgStore::open(PgConfig::new("mysql://x/y"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1.
    let config = PgConfig::new("postgres://postgres@127.0.0.1:1/test")
        .publish_timeout(std::time::Duration::from_secs(2));
    let err = PgStore::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_herald_is_refused() {
    let config = support::fresh_config().await;
    let store = PgStore::open(config.clone()).await.unwrap();
    sqlx::query(&format!(
        "UPDATE \"{}\".herald_meta SET value = $1 WHERE key = 'schema_version'",
        store.schema()
    ))
    .bind(SCHEMA_VERSION + 1)
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let err = PgStore::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(err.to_string().contains("newer herald"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_schema_share_the_log() {
    let config = support::fresh_config().await;
    let (a, b) = tokio::join!(PgStore::open(config.clone()), PgStore::open(config));
    let (a, b) = (a.unwrap(), b.unwrap());
    let bus_a = herald::Bus::new(a.clone());
    let bus_b = herald::Bus::new(b.clone());
    let first = bus_a
        .publish(herald::Message::json("two.t", &1).unwrap())
        .await
        .unwrap();
    let second = bus_b
        .publish(herald::Message::json("two.t", &2).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (first, second),
        (vec![1], vec![2]),
        "one sequence across both"
    );
    a.close().await;
    b.close().await;
}

/// A store dropped without `close` stops sequencing: its session (and the
/// schema's sequencer lock) goes away, so another process can lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_gives_up_the_sequencer_lock() {
    let config = support::fresh_config().await;
    let pool = sqlx::PgPool::connect(&support::url()).await.unwrap();
    let key = format!("herald.sequencer.{}", config.schema_name());
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
             AND objid::bigint = (hashtext($1)::bigint & 4294967295)",
        )
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    {
        let store = PgStore::open(config).await.unwrap();
        let bus = herald::Bus::new(store.clone());
        bus.publish(herald::Message::json("drop.t", &1).unwrap())
            .await
            .unwrap();
        assert_eq!(held().await, 1, "a live store leads");
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while held().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped store still holds the sequencer lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    pool.close().await;
}

/// The sequencer's session dies (its backend is terminated): the store
/// takes the lead again and publishing goes on, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_recovers_when_its_session_is_killed() {
    let config = support::fresh_config().await;
    let name = format!("herald sequencer {}", config.schema_name());
    let store = PgStore::open(config).await.unwrap();
    let bus = herald::Bus::new(store.clone());
    assert_eq!(
        bus.publish(herald::Message::json("kill.t", &1).unwrap())
            .await
            .unwrap(),
        [1]
    );
    let pool = sqlx::PgPool::connect(&support::url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed, [true], "one sequencer session, terminated");
    let seqs = bus
        .publish([
            herald::Message::json("kill.t", &2).unwrap(),
            herald::Message::json("kill.t", &3).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [2, 3]);
    pool.close().await;
    store.close().await;
}

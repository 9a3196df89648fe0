//! Durable consumer-side dedupe: processed ids survive a restart, expire
//! after their window, and keep a handler from running a redelivered
//! message twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::dedupe::{Dedupe, DedupeStore};
use herald::testing::Faults;
use herald::{Bus, Envelope, HandlerObserver, HandlerOutcome, Message, StartPosition};
use herald_sqlite::{SqliteConfig, SqliteStore};
use uuid::Uuid;

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(dir.path().join("d.db")))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_ids_survive_a_restart_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::now_v7();
    {
        let store = open(&dir).await;
        let d = store.dedupe(Duration::from_secs(3600)).unwrap();
        assert!(!d.seen("billing", id).await.unwrap());
        d.record("billing", id).await.unwrap();
        assert!(d.seen("billing", id).await.unwrap());
        assert!(!d.seen("shipping", id).await.unwrap());
        store.close().await;
    }
    let store = open(&dir).await;
    let d = store.dedupe(Duration::from_secs(3600)).unwrap();
    assert!(
        d.seen("billing", id).await.unwrap(),
        "remembered across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_expire_after_the_window_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let short = store.dedupe(Duration::from_millis(1)).unwrap();
    let old = Uuid::now_v7();
    short.record("g", old).await.unwrap();
    // The window is wall-clock time; let it pass.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!short.seen("g", old).await.unwrap(), "expired");
    let long = store.dedupe(Duration::from_secs(60)).unwrap();
    long.record("g", Uuid::now_v7()).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM processed")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(left, 1, "the expired id was purged by the next record");
    assert!(store.dedupe(Duration::ZERO).is_err());
}

struct Acked(tokio::sync::watch::Sender<u64>);

impl HandlerObserver for Acked {
    fn handled(&self, _: &Envelope, _: Duration, outcome: HandlerOutcome) {
        if outcome == HandlerOutcome::Acked {
            self.0.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_runs_each_message_once_when_acks_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let faults = Faults::new();
    let bus = faults.wrap_bus(&Bus::new(store.clone()));
    let runs = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let acked = Arc::new(Acked(tokio::sync::watch::Sender::new(0)));
    let handler = {
        let runs = runs.clone();
        bus.handler("dd.orders")
            .group("billing")
            .start(StartPosition::Earliest)
            .layer(Dedupe::new(store.dedupe(Duration::from_secs(60)).unwrap()))
            .observe(acked.clone())
            .run(move |env| {
                let n: u64 = env.decode().unwrap();
                *runs.lock().unwrap().entry(n).or_default() += 1;
                async { Ok(()) }
            })
            .await
            .unwrap()
    };
    faults.lose_acks(3);
    let batch: Vec<_> = (0..10)
        .map(|i| Message::json("dd.orders", &i).unwrap())
        .collect();
    bus.publish(batch).await.unwrap();
    let mut rx = acked.0.subscribe();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= 10))
        .await
        .expect("every message acked (three after a lost ack)")
        .unwrap();
    handler.shutdown(Duration::from_secs(5)).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 10);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
}

/// A handler call that outlives its lease and returns effects: its late
/// ack is refused (the redelivery owns the message now), so the message is
/// not recorded as handled and the redelivery, even one that reaches the
/// dedupe check only after the late call reported, still runs and writes
/// the effects — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_with_effects_neither_writes_nor_counts_as_handled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let bus = Bus::new(store.clone());
    let first_reported = Arc::new(tokio::sync::watch::Sender::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    struct Report(
        Arc<tokio::sync::watch::Sender<bool>>,
        Arc<Mutex<Vec<HandlerOutcome>>>,
    );
    impl HandlerObserver for Report {
        fn handled(&self, env: &Envelope, _: Duration, outcome: HandlerOutcome) {
            self.1.lock().unwrap().push(outcome);
            if env.attempt() == 1 {
                self.0.send_replace(true);
            }
        }
    }
    // Redeliveries wait here until the late first call has reported.
    let gate = {
        let first_reported = first_reported.clone();
        herald::middleware::layer_fn(move |env, next| {
            let mut reported = first_reported.subscribe();
            async move {
                if env.attempt() >= 2 {
                    let _ = reported.wait_for(|r| *r).await;
                }
                next.run(env).await
            }
        })
    };
    let handler = bus
        .handler("late.in")
        .group("late")
        .start(StartPosition::Earliest)
        .ack_wait(Duration::from_millis(300))
        .layer(gate)
        .layer(Dedupe::new(store.dedupe(Duration::from_secs(60)).unwrap()))
        .observe(Report(first_reported.clone(), outcomes.clone()))
        .run(|env| async move {
            if env.attempt() == 1 {
                // Outlive the 300 ms lease: this is the scenario, not a wait
                // for another task.
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
            Message::json("late.out", &1)
        })
        .await
        .unwrap();
    bus.publish(Message::json("late.in", &1).unwrap())
        .await
        .unwrap();
    let mut out = bus
        .subscribe_raw("late.out")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let effect = herald_conformance::recv(&mut out).await;
    effect.ack().await.unwrap();
    handler.shutdown(Duration::from_secs(5)).await;
    // The late first call reports first (the gate holds every redelivery
    // until it has), and its ack is a failure. A redelivery that waited
    // past its own lease at the gate fails the same way, and it may report
    // before or after the one redelivery that succeeds: exactly one run
    // succeeds, every other is retried.
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes.first(),
        Some(&HandlerOutcome::Retried),
        "{outcomes:?}"
    );
    let acked = outcomes
        .iter()
        .filter(|o| **o == HandlerOutcome::Acked)
        .count();
    assert_eq!(acked, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, HandlerOutcome::Acked | HandlerOutcome::Retried)),
        "{outcomes:?}"
    );
    assert_eq!(
        store.last_seq(&"late.out".parse().unwrap()).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        bus.delivery_state("late.in", 1, "late").await.unwrap(),
        herald::DeliveryState::Acked
    );
}

//! What a bus gets from the `HERALD_*` variables without being told (issue
//! 22 item 1): every bus reads them, not only those `herald-store` opens,
//! and its handlers retry by their policy by default, then dead-letter.
//!
//! Environment variables are process-wide, so this file holds one test that
//! sets them between steps, each on a runtime of its own.

use std::time::Duration;

use herald::retry::RetryPolicy;
use herald::{Bus, Error, ErrorCode, Message};

const KEYS: [&str; 3] = [
    "HERALD_MAX_RETRY_ATTEMPTS",
    "HERALD_RETRY_BACKOFF_BASE",
    "HERALD_RETRY_MAX_DELAY",
];

fn set(vars: &[(&str, &str)]) {
    for key in KEYS {
        std::env::remove_var(key);
    }
    for (key, value) in vars {
        std::env::set_var(key, value);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The policy a handler on `bus` gets when it names none, and whether
/// `redeliver_at_once` turns it off.
async fn default_policy(bus: &Bus) -> Option<RetryPolicy> {
    let handler = bus
        .handler("env.t")
        .group("g")
        .run(|_| async { Ok(()) })
        .await
        .unwrap();
    let at_once = bus
        .handler("env.t")
        .group("g2")
        .redeliver_at_once()
        .run(|_| async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(at_once.retry_policy(), None);
    handler.retry_policy()
}

/// A handler that always fails, retried by the environment's policy: it is
/// called once and then once per retry, and its event is dead-lettered as
/// retries exhausted (not by `max_deliver`, which is 5).
async fn fails_then_dead_letters() {
    let bus = Bus::memory();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let handler = bus
        .handler("env.fails")
        .group("g")
        .run(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(Error::new(ErrorCode::Unavailable, "down")) }
        })
        .await
        .unwrap();
    bus.publish(Message::json("env.fails", &1).unwrap())
        .await
        .unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let dead = bus.dead_letters().await.unwrap();
            if !dead.is_empty() {
                break dead;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the event is dead-lettered");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .starts_with("retries exhausted after 3 attempts"),
        "{}",
        dead[0].reason
    );
    let report = handler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!((report.retried, report.dead_lettered), (2, 1));
}

#[test]
fn every_bus_reads_its_handler_retries_from_the_environment() {
    set(&[]);
    let defaults = block_on(async { default_policy(&Bus::memory()).await });
    assert_eq!(defaults, Some(RetryPolicy::default()));

    set(&[
        ("HERALD_MAX_RETRY_ATTEMPTS", "7"),
        ("HERALD_RETRY_BACKOFF_BASE", "0.25"),
        ("HERALD_RETRY_MAX_DELAY", "10"),
    ]);
    let configured = RetryPolicy::default()
        .max_attempts(7)
        .base(Duration::from_millis(250))
        .max_delay(Duration::from_secs(10));
    block_on(async {
        assert_eq!(default_policy(&Bus::memory()).await, Some(configured));
        let built = Bus::builder().build().unwrap();
        assert_eq!(default_policy(&built).await, Some(configured));
        // Code wins over the environment.
        let own = RetryPolicy::default().max_attempts(1);
        let bus = Bus::builder().handler_retry(own).build().unwrap();
        assert_eq!(default_policy(&bus).await, Some(own));
    });

    set(&[("HERALD_MAX_RETRY_ATTEMPTS", "99")]);
    let err = Bus::builder().build().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(
        err.to_string().contains("HERALD_MAX_RETRY_ATTEMPTS=99"),
        "{err}"
    );
    let kept = block_on(async { default_policy(&Bus::memory()).await });
    assert_eq!(kept, Some(RetryPolicy::default()));

    set(&[
        ("HERALD_MAX_RETRY_ATTEMPTS", "2"),
        ("HERALD_RETRY_BACKOFF_BASE", "0.001"),
    ]);
    block_on(fails_then_dead_letters());
    set(&[]);
}

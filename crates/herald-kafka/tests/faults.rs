//! Brokers out of reach: none at all (opening fails fast), and one lost
//! while publishing (the publish breaker opens). A payload over the limit
//! is the conformance suite's `limits` scenario, which this store runs.

mod support;

use std::time::{Duration, Instant};

use herald::breaker::{BreakerState, CircuitBreaker};
use herald::retry::RetryPolicy;
use herald::{Bus, ErrorCode, Message};
use herald_kafka::{KafkaConfig, KafkaStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_fast_with_unavailable() {
    let nobody = format!("127.0.0.1:{}", support::free_port());
    let started = Instant::now();
    let err = KafkaStore::open(KafkaConfig::new(nobody).timeout(Duration::from_secs(30)))
        .await
        .err()
        .expect("no broker answers");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.to_string().contains("no broker"), "{err}");
    // Fast: a refused connection, not the 30 s configured for a broker to answer.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_opens_the_publish_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let pid = support::spawn_tansu(port, "memory://tansu/", dir.path());
    let config = KafkaConfig::new(format!("127.0.0.1:{port}"))
        .environment("lost")
        .batch_messages(1)
        .timeout(Duration::from_secs(1));
    let store = KafkaStore::open(config).await.unwrap();
    let breaker = CircuitBreaker::builder()
        .threshold(3)
        .reset_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let bus = Bus::builder()
        .transport(store)
        .publish_retry(RetryPolicy::default().max_attempts(0))
        .publish_breaker(breaker.clone())
        .build()
        .unwrap();
    bus.publish(Message::json("lost.orders", &0).unwrap())
        .await
        .unwrap();

    // SAFETY: kill(2) on the broker this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    for n in 1..=3 {
        let err = bus
            .publish(Message::json("lost.orders", &n).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), ErrorCode::Timeout | ErrorCode::Unavailable),
            "{err}"
        );
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let err = bus
        .publish(Message::json("lost.orders", &4).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert_eq!(breaker.state(), BreakerState::Open);
}

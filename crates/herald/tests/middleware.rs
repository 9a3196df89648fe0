//! Handler middleware under tokio's paused time, where waits are exact:
//! the circuit breaker's transitions and a per-key rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::breaker::{BreakerState, CircuitBreaker};
use herald::middleware::layer_fn;
use herald::rate_limit::RateLimit;
use herald::testing::FaultLayer;
use herald::{Bus, Envelope, ErrorCode, HandlerObserver, HandlerOutcome, Message};
use tokio::sync::watch;
use tokio::time::Instant;

/// Acked handler calls, to wait for without sleeping.
#[derive(Clone)]
struct Acked(Arc<watch::Sender<u64>>);

impl Acked {
    fn new() -> Self {
        Acked(Arc::new(watch::Sender::new(0)))
    }

    async fn until(&self, n: u64) {
        self.0.subscribe().wait_for(|a| *a >= n).await.unwrap();
    }
}

impl HandlerObserver for Acked {
    fn handled(&self, _envelope: &Envelope, _elapsed: Duration, outcome: HandlerOutcome) {
        if outcome == HandlerOutcome::Acked {
            self.0.send_modify(|a| *a += 1);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_half_opens_and_closes_on_time() {
    let bus = Bus::memory();
    let reset = Duration::from_secs(10);
    let breaker = CircuitBreaker::builder()
        .threshold(3)
        .reset_timeout(reset)
        .build()
        .unwrap();
    // What the breaker said each time a call got through it.
    let calls = Arc::new(Mutex::new(Vec::<(Instant, BreakerState)>::new()));
    let seen = {
        let (calls, breaker) = (calls.clone(), breaker.clone());
        layer_fn(move |envelope, next| {
            calls
                .lock()
                .unwrap()
                .push((Instant::now(), breaker.state()));
            next.run(envelope)
        })
    };
    let acked = Acked::new();
    let t0 = Instant::now();
    let handler = bus
        .handler("cb.orders")
        .group("g")
        .concurrency(1)
        // Its failures come back at once: the breaker alone spaces them.
        .redeliver_at_once()
        .layer(breaker.clone())
        .layer(seen)
        .layer(FaultLayer::new().fail(4, ErrorCode::Unavailable))
        .observe(acked.clone())
        .run(|_env| async { Ok(()) })
        .await
        .unwrap();
    bus.publish(Message::json("cb.orders", &1).unwrap())
        .await
        .unwrap();
    acked.until(1).await;
    let report = handler.shutdown(Duration::from_secs(1)).await;

    let calls = calls.lock().unwrap().clone();
    let states: Vec<_> = calls.iter().map(|(_, s)| *s).collect();
    use BreakerState::*;
    assert_eq!(states, [Closed, Closed, Closed, HalfOpen, HalfOpen]);
    let at: Vec<_> = calls.iter().map(|(t, _)| *t - t0).collect();
    assert!(at[..3].iter().all(|t| t.is_zero()), "{at:?}");
    assert_eq!(at[3], reset, "the trial comes when the reset timeout ends");
    assert_eq!(
        at[4],
        2 * reset,
        "a failed trial reopens for a full timeout"
    );
    assert_eq!(breaker.state(), Closed);
    assert_eq!(
        (report.acked, report.retried, report.dead_lettered),
        (1, 4, 0)
    );
    assert!(report.deferred >= 2, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn per_key_rate_limit_is_exact_and_keys_are_independent() {
    let bus = Bus::memory();
    let starts = Arc::new(Mutex::new(HashMap::<String, Vec<Duration>>::new()));
    let acked = Acked::new();
    let t0 = Instant::now();
    let handler = {
        let starts = starts.clone();
        bus.handler("rl.orders")
            .group("g")
            .concurrency(4)
            .layer(RateLimit::per_key(2, Duration::from_secs(1)).unwrap())
            .observe(acked.clone())
            .run(move |env| {
                let key = env.key().unwrap_or_default().to_owned();
                starts
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .push(Instant::now() - t0);
                async { Ok(()) }
            })
            .await
            .unwrap()
    };
    let batch: Vec<_> = (0..20)
        .map(|i| {
            Message::json("rl.orders", &i)
                .unwrap()
                .key(if i % 2 == 0 { "a" } else { "b" })
        })
        .collect();
    bus.publish(batch).await.unwrap();
    acked.until(20).await;
    handler.shutdown(Duration::from_secs(1)).await;

    let starts = starts.lock().unwrap().clone();
    let secs = |k: &str| -> Vec<u64> { starts[k].iter().map(|d| d.as_secs()).collect() };
    // Two per second per key, and key b never waits for key a.
    assert_eq!(secs("a"), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(secs("b"), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    for times in starts.values() {
        for w in times.windows(3) {
            assert!(w[2] - w[0] >= Duration::from_secs(1), "{times:?}");
        }
    }
}

/// An observer that panics loses nothing and stops nothing: the runtime
/// keeps handling, and the message whose report panicked comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_observer_does_not_stop_the_handler() {
    struct Flaky(std::sync::atomic::AtomicBool, Acked);
    impl HandlerObserver for Flaky {
        fn handled(&self, envelope: &Envelope, elapsed: Duration, outcome: HandlerOutcome) {
            if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("observer bug");
            }
            self.1.handled(envelope, elapsed, outcome);
        }
    }
    let bus = Bus::memory();
    let acked = Acked::new();
    let handler = bus
        .handler("obs.t")
        .group("g")
        .observe(Flaky(Default::default(), acked.clone()))
        .run(|_env| async { Ok(()) })
        .await
        .unwrap();
    let batch: Vec<_> = (0..4)
        .map(|i| Message::json("obs.t", &i).unwrap())
        .collect();
    bus.publish(batch).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked.until(3))
        .await
        .expect("the other three are handled after the panic");
    handler.shutdown(Duration::from_secs(5)).await;
}

/// A subscription that keeps failing is retried with a growing backoff,
/// not in a busy loop, and the message still arrives.
#[tokio::test(start_paused = true)]
async fn subscription_errors_back_off_and_nothing_is_lost() {
    let faults = herald::testing::Faults::new();
    let bus = faults.wrap_bus(&Bus::memory());
    let acked = Acked::new();
    let handler = bus
        .handler("err.t")
        .group("g")
        .observe(acked.clone())
        .run(|_env| async { Ok(()) })
        .await
        .unwrap();
    faults.fail_deliveries(5);
    let t0 = Instant::now();
    bus.publish(Message::json("err.t", &1).unwrap())
        .await
        .unwrap();
    acked.until(1).await;
    // 50 + 100 + 200 + 400 + 800 ms of backoff before the delivery.
    assert!(Instant::now() - t0 >= Duration::from_millis(1550));
    handler.shutdown(Duration::from_secs(1)).await;
}

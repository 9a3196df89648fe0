//! The handler runtime at scale on the memory transport: 1,000 keys × 100
//! events across 8 concurrent handlers — no key is ever handled
//! concurrently and every key is handled in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::{Bus, Message, Payload};

const KEYS: u64 = 1000;
const EACH: u64 = 100;

/// Per key: whether a handler is inside it, and the last n handled.
type KeyState = Mutex<(bool, Option<u64>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_keys_in_order_across_eight_handlers() {
    let bus = Bus::memory();
    let keys: Arc<Vec<KeyState>> = Arc::new((0..KEYS).map(|_| Mutex::new((false, None))).collect());
    let violations = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (keys, violations, handled, all_done) = (
            keys.clone(),
            violations.clone(),
            handled.clone(),
            all_done.clone(),
        );
        bus.handler("scale.orders")
            .group("workers")
            .concurrency(8)
            .run(move |env| {
                let (keys, violations, handled, all_done) = (
                    keys.clone(),
                    violations.clone(),
                    handled.clone(),
                    all_done.clone(),
                );
                async move {
                    let n: u64 = env.decode()?;
                    let key = (n % KEYS) as usize;
                    {
                        let mut k = keys[key].lock().unwrap();
                        if k.0 || k.1.is_some_and(|last| last > n) {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        *k = (true, Some(n));
                    }
                    if n % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                    keys[key].lock().unwrap().0 = false;
                    if handled.fetch_add(1, Ordering::AcqRel) + 1 == KEYS * EACH {
                        all_done.notify_one();
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    for round in 0..EACH {
        let batch: Vec<Message> = (0..KEYS)
            .map(|k| {
                let n = round * KEYS + k;
                Message::new("scale.orders", Payload::json(&n).unwrap()).key(format!("k{k}"))
            })
            .collect();
        for chunk in batch.chunks(500) {
            bus.publish(chunk.to_vec()).await.unwrap();
        }
    }
    tokio::time::timeout(Duration::from_secs(120), all_done.notified())
        .await
        .expect("all handled");
    let report = handler.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.acked, KEYS * EACH);
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "a key ran concurrently or out of order"
    );
}

#[tokio::test]
async fn the_observer_sees_every_call_with_its_outcome() {
    use herald::{Envelope, Error, ErrorCode, HandlerObserver, HandlerOutcome};

    #[derive(Default, Clone)]
    struct Seen(
        Arc<Mutex<Vec<(u64, HandlerOutcome)>>>,
        Arc<tokio::sync::Notify>,
    );
    impl HandlerObserver for Seen {
        fn handled(&self, envelope: &Envelope, elapsed: Duration, outcome: HandlerOutcome) {
            assert!(elapsed < Duration::from_secs(60));
            let mut seen = self.0.lock().unwrap();
            seen.push((envelope.decode().unwrap(), outcome));
            if seen.len() == 4 {
                self.1.notify_one();
            }
        }
    }

    let bus = Bus::memory();
    let seen = Seen::default();
    let handler = bus
        .handler("observed")
        .group("g")
        .observe(seen.clone())
        .run(|env| async move {
            match (env.decode::<u64>()?, env.attempt()) {
                (1, 1) => Err(Error::new(ErrorCode::Unavailable, "later")),
                (2, _) => Err(Error::terminal(ErrorCode::Validation, "never")),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
    bus.publish([0u64, 1, 2].map(|n| Message::new("observed", Payload::json(&n).unwrap())))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), seen.1.notified())
        .await
        .expect("four calls");
    handler.shutdown(Duration::from_secs(5)).await;
    let mut got = seen.0.lock().unwrap().clone();
    got.sort_by_key(|(n, o)| (*n, *o as u8));
    assert_eq!(
        got,
        [
            (0, HandlerOutcome::Acked),
            (1, HandlerOutcome::Acked),
            (1, HandlerOutcome::Retried),
            (2, HandlerOutcome::DeadLettered)
        ]
    );
}

/// A call waiting for its ack to commit gives its concurrency slot to the
/// next: with one slot and the store's acks held, three calls still run;
/// none is reported acked until its ack commits, and the shutdown waits
/// for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_its_ack_gives_its_slot_to_the_next() {
    let faults = herald::testing::Faults::new();
    let bus = faults.wrap_bus(&Bus::memory());
    faults.hold_acks(true);
    let calls = Arc::new(AtomicU64::new(0));
    let three = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (calls, three) = (calls.clone(), three.clone());
        bus.handler("slots.work")
            .group("workers")
            .concurrency(1)
            .run(move |_| {
                if calls.fetch_add(1, Ordering::AcqRel) + 1 == 3 {
                    three.notify_one();
                }
                std::future::ready(Ok(()))
            })
            .await
            .unwrap()
    };
    let work = (1..=3).map(|n| Message::new("slots.work", Payload::json(&n).unwrap()));
    bus.publish(work.collect::<Vec<_>>()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), three.notified())
        .await
        .expect("the next calls ran while the first one's ack waited");
    faults.hold_acks(false);
    let report = handler.shutdown(Duration::from_secs(30)).await;
    assert_eq!((report.acked, report.abandoned), (3, 0));
}

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

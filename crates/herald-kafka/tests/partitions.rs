//! A group on a topic of several partitions, shared by two stores (as two
//! processes would be): Kafka gives each its partitions, a key stays with
//! one member at a time and in order, and when one member leaves mid-stream
//! its partitions move to the other, its unacked events come again and
//! nothing is lost.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};
use herald_kafka::KafkaStore;

const TOPIC: &str = "parts.orders";
const KEYS: u64 = 12;
const N: u64 = 600;

#[derive(Default)]
struct Seen {
    /// Per key, the numbers acked, in ack order.
    acked: HashMap<u64, Vec<u64>>,
    /// Keys being handled right now.
    busy: HashSet<u64>,
    /// Events delivered, with how many times.
    deliveries: HashMap<u64, u32>,
}

fn key_of(n: u64) -> u64 {
    n % KEYS
}

/// Consume until `stop` says so; ack each event unless `ack` says not.
/// `joined` is told once the subscription is open (the member holds its
/// first partitions).
async fn member(
    bus: Bus,
    seen: Arc<Mutex<Seen>>,
    ack: impl Fn(u64) -> bool + Send + 'static,
    done: tokio::sync::watch::Receiver<bool>,
    joined: tokio::sync::oneshot::Sender<()>,
) {
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group("billing")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let _ = joined.send(());
    let mut done = done;
    loop {
        let d = tokio::select! {
            d = sub.next() => d,
            _ = done.wait_for(|d| *d) => return,
        };
        let Some(Ok(d)) = d else { return };
        let n: u64 = d.decode().unwrap();
        {
            let mut s = seen.lock().unwrap();
            assert!(
                s.busy.insert(key_of(n)),
                "key {} was in flight twice at once",
                key_of(n)
            );
            *s.deliveries.entry(n).or_default() += 1;
        }
        tokio::task::yield_now().await;
        let acking = ack(n);
        {
            let mut s = seen.lock().unwrap();
            s.busy.remove(&key_of(n));
            if acking {
                s.acked.entry(key_of(n)).or_default().push(n);
            }
        }
        if acking {
            if d.ack().await.is_err() {
                // Its partition moved away meanwhile: it comes again.
                let mut s = seen.lock().unwrap();
                if let Some(v) = s.acked.get_mut(&key_of(n)) {
                    v.retain(|x| *x != n);
                }
            }
        } else {
            std::mem::forget(d);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_keep_keys_in_order_and_take_over() {
    let config = support::fresh_config().partitions(3);
    let a_store = KafkaStore::open(config.clone()).await.unwrap();
    // The topic is there before the members, so each joins to partitions.
    a_store
        .create_topic(&herald::Topic::new(TOPIC).unwrap(), 3)
        .await
        .unwrap();
    let a = Bus::new(a_store);
    let b_store = KafkaStore::open(config.clone()).await.unwrap();
    let b = Bus::new(b_store.clone());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop, done) = tokio::sync::watch::channel(false);

    // Member b stops (without acking) at the first event after the 20th it
    // sees (it holds a partition from the start: a subscription returns once
    // its group is assigned, and nothing is published before both members
    // are in: a member that joined late would find its partitions drained
    // by the other): its store is then closed, as a crashed process would
    // be.
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counter.clone();
    let (b_joined, b_in) = tokio::sync::oneshot::channel();
    let member_b = tokio::spawn(member(
        b.clone(),
        seen.clone(),
        move |_| c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 20,
        done.clone(),
        b_joined,
    ));
    let (a_joined, a_in) = tokio::sync::oneshot::channel();
    let member_a = tokio::spawn(member(
        a.clone(),
        seen.clone(),
        |_| true,
        done.clone(),
        a_joined,
    ));
    a_in.await.unwrap();
    b_in.await.unwrap();

    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<Message> = chunk
            .iter()
            .map(|n| {
                Message::json(TOPIC, n)
                    .unwrap()
                    .key(format!("k{}", key_of(*n)))
            })
            .collect();
        a.publish(batch).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), member_b)
        .await
        .expect("member b saw more than 20 events")
        .unwrap();
    b_store.close().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let acked: usize = seen.lock().unwrap().acked.values().map(Vec::len).sum();
        let distinct: HashSet<u64> = seen
            .lock()
            .unwrap()
            .acked
            .values()
            .flatten()
            .copied()
            .collect();
        if distinct.len() as u64 == N {
            assert!(acked as u64 >= N);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} events acked",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    member_a.await.unwrap();

    let s = seen.lock().unwrap();
    for (key, acked) in &s.acked {
        let mut expected: Vec<u64> = (0..N).filter(|n| key_of(*n) == *key).collect();
        let mut got = acked.clone();
        got.dedup();
        assert_eq!(
            got.len(),
            expected.len(),
            "key {key}: every event acked, duplicates only back to back"
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {got:?}"
        );
        expected.sort_unstable();
        assert_eq!(got, expected);
    }
    let both = s.deliveries.values().filter(|c| **c > 1).count();
    assert!(both >= 1, "the event b held without acking came again to a");
}

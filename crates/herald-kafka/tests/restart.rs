//! A broker crash mid-stream: a tansu broker of the test's own (own port,
//! sqlite storage in a temp dir) is killed by its PID while keyed
//! publishers and a consumer group of three members (two in one store, one
//! in another) run, then restarted on the same storage. Every publish that
//! returned `Ok` is delivered, per-key order holds within the group,
//! duplicates are only of events not yet acked, and no consumer is left
//! stalled. Never touches a shared broker.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};
use herald_kafka::{KafkaConfig, KafkaStore};

const TOPIC: &str = "crash.orders";
const N: u64 = 1500;
const KEYS: u64 = 10;

#[derive(Default)]
struct Log {
    /// Per key, numbers in the order they were delivered to the group.
    delivered: HashMap<u64, Vec<u64>>,
    acked: HashSet<u64>,
    /// Deliveries of an event already acked.
    acked_again: Vec<u64>,
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

async fn member(bus: Bus, log: Arc<Mutex<Log>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group("crash")
        .start(StartPosition::Earliest)
        .ack_wait(Duration::from_secs(5))
        .await
        .unwrap();
    loop {
        let d = tokio::select! {
            d = sub.next() => d,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(d) = d else { return };
        let Ok(d) = d else { continue };
        let n: u64 = d.decode().unwrap();
        {
            let mut l = log.lock().unwrap();
            if l.acked.contains(&n) {
                l.acked_again.push(n);
            }
            l.delivered.entry(n % KEYS).or_default().push(n);
        }
        if d.ack().await.is_ok() {
            log.lock().unwrap().acked.insert(n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_published_with_ok_is_lost_when_the_broker_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let pid = support::spawn_tansu(port, "sqlite://tansu.db", dir.path());
    let config = KafkaConfig::new(format!("127.0.0.1:{port}"))
        .environment("crash")
        .partitions(3)
        .batch_messages(1)
        .timeout(Duration::from_secs(20));
    let producer = Bus::new(KafkaStore::open(config.clone()).await.unwrap());
    let consumers = Bus::new(KafkaStore::open(config.clone()).await.unwrap());
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let members: Vec<_> = [consumers.clone(), consumers.clone(), producer.clone()]
        .into_iter()
        .map(|b| tokio::spawn(member(b, log.clone(), stopped.clone())))
        .collect();

    let published = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let (bus, published) = (producer.clone(), published.clone());
        tokio::spawn(async move {
            for n in 0..N {
                let message = Message::json(TOPIC, &n)
                    .unwrap()
                    .key(format!("k{}", n % KEYS))
                    .idempotency_key(format!("order-{n}"));
                // Retried until the broker takes it (the bus retries
                // transient failures itself first).
                loop {
                    match bus.publish(message.clone()).await {
                        Ok(_) => break,
                        Err(e) => assert!(e.retryable(), "{e}"),
                    }
                }
                published.lock().unwrap().push(n);
            }
        })
    };

    // Kill the broker a third of the way through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (published.lock().unwrap().len() as u64) < N / 3 {
        assert!(tokio::time::Instant::now() < deadline, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: the broker is this test's own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    while alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restarted = support::spawn_tansu(port, "sqlite://tansu.db", dir.path());

    tokio::time::timeout(Duration::from_secs(240), publisher)
        .await
        .expect("the publisher finished after the restart")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let acked = log.lock().unwrap().acked.len() as u64;
        if acked == N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {acked} of {N} acked: a consumer stalled or events were lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send_replace(true);
    for m in members {
        m.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(published.lock().unwrap().len() as u64, N);
    assert_eq!(
        log.acked,
        (0..N).collect::<HashSet<_>>(),
        "every publish that returned Ok"
    );
    for (key, seen) in &log.delivered {
        // First deliveries of each event, in delivery order, follow publish
        // order; a repeat comes only where an earlier delivery was not acked.
        let mut first = Vec::new();
        let mut once = HashSet::new();
        for n in seen {
            if once.insert(*n) {
                first.push(*n);
            }
        }
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {first:?}"
        );
    }
    if producer.features().exact_resume {
        assert!(
            log.acked_again.is_empty(),
            "acked events delivered again: {:?}",
            log.acked_again
        );
    } else {
        println!(
            "restart: {} deliveries of an already acked event (these brokers keep no commit metadata, so acks above a held event are not kept across rebalances)",
            log.acked_again.len()
        );
    }
    // SAFETY: the broker is this test's own child.
    unsafe { libc::kill(restarted as i32, libc::SIGKILL) };
}

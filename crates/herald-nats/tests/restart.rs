//! The server dies mid-stream and comes back on the same store: every
//! publish that returned `Ok` is delivered to the group, in order per key,
//! and nothing acked comes back; the consumer does not stall after the
//! reconnect.

mod own_server;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload};
use herald_nats::{NatsConfig, NatsStore};
use own_server::OwnServer;

const PUBLISHERS: u64 = 2;
const PER_PUBLISHER: u64 = 1_500;
const KEYS: u64 = 16;

#[derive(Default)]
struct Seen {
    /// Per key: the (seq, number) acked.
    acked: HashMap<String, Vec<(u64, u64)>>,
    /// Per key: the seqs in the order their first deliveries began.
    started: HashMap<String, Vec<u64>>,
    /// Deliveries of events already acked.
    again: Vec<u64>,
    /// Per key: a delivery of an event older than one already acked.
    behind: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing_acked_and_stalls_nobody() {
    let mut server = OwnServer::start();
    let config = NatsConfig::new(server.url())
        .prefix("fault")
        .request_timeout(Duration::from_secs(2));
    let bus = Bus::new(NatsStore::open(config).await.expect("open"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut sub = bus
            .subscribe_raw("fault.jobs")
            .group("workers")
            .start(herald::StartPosition::Earliest)
            .await
            .unwrap();
        let seen = seen.clone();
        members.push(tokio::spawn(async move {
            let mut errors = 0u32;
            while let Some(d) = sub.next().await {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        assert!(e.retryable(), "a non-retryable delivery error: {e}");
                        errors += 1;
                        continue;
                    }
                };
                let n: u64 = d.decode().unwrap();
                let seq = d.seq().unwrap();
                let key = d.key().unwrap().to_owned();
                {
                    let mut s = seen.lock().unwrap();
                    let done = s.acked.get(&key);
                    if done.is_some_and(|v| v.iter().any(|(_, m)| *m == n)) {
                        s.again.push(n);
                    }
                    let started = s.started.entry(key.clone()).or_default();
                    if !started.contains(&seq) {
                        if started.last().is_some_and(|&last| last > seq) {
                            let last = *started.last().unwrap();
                            s.behind
                                .push(format!("{key}: seq {seq} began after seq {last}"));
                        }
                        s.started.get_mut(&key).unwrap().push(seq);
                    }
                }
                if d.ack().await.is_ok() {
                    seen.lock()
                        .unwrap()
                        .acked
                        .entry(key)
                        .or_default()
                        .push((seq, n));
                }
            }
            errors
        }));
    }

    let ok = Arc::new(Mutex::new(BTreeSet::new()));
    let publish_errors = Arc::new(Mutex::new(Vec::new()));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, ok, errors) = (bus.clone(), ok.clone(), publish_errors.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let n = p * PER_PUBLISHER + i;
                let msg = Message::new("fault.jobs", Payload::json(&n).unwrap())
                    .key(format!("k{}", n % KEYS))
                    .idempotency_key(format!("job-{n}"));
                // Retry what failed with the same key: the stream dedupes.
                loop {
                    match bus.publish(msg.clone()).await {
                        Ok(_) => {
                            ok.lock().unwrap().insert(n);
                            break;
                        }
                        Err(e) => {
                            assert!(e.retryable(), "a non-retryable publish error: {e}");
                            errors.lock().unwrap().push(e.code().as_str());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }

    // Kill the server a third of the way through, and bring it back.
    while ok.lock().unwrap().len() < (PUBLISHERS * PER_PUBLISHER / 3) as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();

    for p in publishers {
        p.await.unwrap();
    }
    let expected: BTreeSet<u64> = ok.lock().unwrap().clone();
    assert_eq!(expected.len() as u64, PUBLISHERS * PER_PUBLISHER);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done: usize = seen.lock().unwrap().acked.values().map(Vec::len).sum();
        if done >= expected.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group stalled after the restart at {done} of {} acks",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let s = seen.lock().unwrap();
        let mut got = BTreeMap::new();
        for (key, ns) in &s.acked {
            for (seq, n) in ns {
                assert!(
                    got.insert(*n, key.clone()).is_none(),
                    "event {n} (seq {seq}) acked twice"
                );
            }
        }
        let got: BTreeSet<u64> = got.into_keys().collect();
        assert_eq!(got, expected, "every event published with Ok is acked once");
        assert!(s.again.is_empty(), "acked events came back: {:?}", s.again);
        assert!(s.behind.is_empty(), "per-key order broke: {:?}", s.behind);
        let errors = publish_errors.lock().unwrap();
        println!(
            "publish errors during the outage: {} ({:?})",
            errors.len(),
            errors.iter().collect::<BTreeSet<_>>()
        );
    }
    bus.close().await.unwrap();
    for m in members {
        let errors = m.await.unwrap();
        println!("consumer errors: {errors}");
    }
}

/// Publish `n` to `topic` until the server takes it (once: the retries
/// carry one idempotency key).
async fn publish_through_outage(bus: &Bus, topic: &'static str, n: u64) {
    let msg =
        Message::new(topic, Payload::json(&n).unwrap()).idempotency_key(format!("{topic}-{n}"));
    loop {
        match bus.publish(msg.clone()).await {
            Ok(_) => return,
            Err(e) => {
                assert!(e.retryable(), "a non-retryable publish error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_without_a_group_resume_after_a_restart() {
    const BEFORE: u64 = 300;
    const AFTER: u64 = 300;
    const NEW_TOPIC: u64 = 50;
    let mut server = OwnServer::start();
    let config = NatsConfig::new(server.url())
        .prefix("feed")
        .request_timeout(Duration::from_secs(2));
    let bus = Bus::new(NatsStore::open(config).await.expect("open"));
    // One on a pattern (it must also find a topic made after the restart),
    // one on a single topic.
    let mut subs = [
        bus.subscribe_raw("feed.>")
            .ephemeral()
            .start(herald::StartPosition::Earliest)
            .await
            .unwrap(),
        bus.subscribe_raw("feed.a")
            .ephemeral()
            .start(herald::StartPosition::Earliest)
            .await
            .unwrap(),
    ];
    for n in 0..BEFORE {
        publish_through_outage(&bus, "feed.a", n).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    for n in BEFORE..BEFORE + AFTER {
        publish_through_outage(&bus, "feed.a", n).await;
    }
    for n in 0..NEW_TOPIC {
        publish_through_outage(&bus, "feed.b", n).await;
    }

    let expected = [
        BTreeMap::from([("feed.a", BEFORE + AFTER), ("feed.b", NEW_TOPIC)]),
        BTreeMap::from([("feed.a", BEFORE + AFTER)]),
    ];
    for (sub, expected) in subs.iter_mut().zip(expected) {
        let total: u64 = expected.values().sum();
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut count = 0;
        while count < total {
            let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("a subscriber stalled after the restart at {count} of {total}: {got:?}")
                })
                .expect("the subscription is open");
            let Ok(d) = d else { continue };
            got.entry(d.topic().to_string())
                .or_default()
                .push(d.seq().unwrap());
            d.ack().await.unwrap();
            count += 1;
        }
        for (topic, n) in expected {
            let seqs = got.remove(topic).unwrap_or_default();
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "{topic}: every event once, in seq order, across the restart"
            );
        }
        assert!(got.is_empty(), "events of topics not subscribed: {got:?}");
    }
    bus.close().await.unwrap();
}

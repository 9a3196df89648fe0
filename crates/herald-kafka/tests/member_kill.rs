//! A group member killed mid-batch: a child process (this executable with
//! `HERALD_KAFKA_ROLE=member`) shares a group over a three-partition topic
//! with a member in this process, acks a few events, takes one more and is
//! SIGKILLed while holding it. Its partitions move to the member left, the
//! event it held (and whatever it had not acked) comes again, nothing is
//! lost, each key stays in order, and no event it acked is delivered again
//! where the brokers keep commit metadata.
//!
//! Harness-less (`harness = false`): one executable plays both parts.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};
use herald_kafka::{KafkaConfig, KafkaStore};

const TOPIC: &str = "kill.orders";
const GROUP: &str = "kill";
const N: u64 = 300;
const KEYS: u64 = 12;
/// Events the child acks before it holds one and is killed.
const CHILD_ACKS: u64 = 20;
/// How long the brokers wait for the killed member (Kafka's minimum).
const SESSION_MS: u32 = 6_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("HERALD_KAFKA_ROLE").as_deref() == Ok("member") {
        runtime.block_on(child());
    } else {
        let started = Instant::now();
        runtime.block_on(parent());
        println!("member_kill: ok in {:.1?}", started.elapsed());
    }
}

fn config_from_env() -> KafkaConfig {
    let var = |k: &str| std::env::var(k).expect(k);
    KafkaConfig::new(var("HERALD_KAFKA_CHILD_BROKERS"))
        .environment(var("HERALD_KAFKA_CHILD_ENVIRONMENT"))
        .batch_messages(var("HERALD_KAFKA_CHILD_BATCH").parse().unwrap())
        .partitions(3)
        .session_timeout_ms(SESSION_MS)
}

/// The child: ack `CHILD_ACKS` events, then hold the next until killed.
async fn child() {
    let bus = Bus::new(KafkaStore::open(config_from_env()).await.expect("open"));
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group(GROUP)
        .start(StartPosition::Earliest)
        .await
        .expect("subscribe");
    println!("READY");
    let mut acked = 0;
    while let Some(d) = sub.next().await {
        let d = d.expect("delivery");
        let n: u64 = d.decode().expect("a number");
        if acked == CHILD_ACKS {
            println!("H {n}");
            // Held until the parent kills this process.
            std::future::pending::<()>().await;
        }
        d.ack().await.expect("ack");
        acked += 1;
        println!("A {n}");
    }
}

#[derive(Default)]
struct Log {
    /// Per key, what the parent's member was delivered, in order.
    delivered: HashMap<u64, Vec<u64>>,
    acked: HashSet<u64>,
}

async fn parent() {
    let config = support::fresh_config()
        .partitions(3)
        .session_timeout_ms(SESSION_MS);
    let store = KafkaStore::open(config.clone()).await.unwrap();
    let bus = Bus::new(store.clone());
    // The topic exists before the child joins, so its partitions are split
    // at once.
    bus.publish(Message::json(TOPIC, &N).unwrap().key("warm"))
        .await
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("HERALD_KAFKA_ROLE", "member")
        .env("HERALD_KAFKA_CHILD_BROKERS", support::brokers())
        .env("HERALD_KAFKA_CHILD_ENVIRONMENT", config.environment_name())
        .env(
            "HERALD_KAFKA_CHILD_BATCH",
            support::batch_messages().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(first, "READY");

    let log = Arc::new(Mutex::new(Log::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let member = {
        let (bus, log) = (bus.clone(), log.clone());
        let mut sub = bus
            .subscribe_raw(TOPIC)
            .group(GROUP)
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    d = sub.next() => d,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Some(Ok(d)) = d else { return };
                let n: u64 = d.decode().unwrap();
                if n == N {
                    let _ = d.ack().await;
                    continue;
                }
                log.lock()
                    .unwrap()
                    .delivered
                    .entry(n % KEYS)
                    .or_default()
                    .push(n);
                if d.ack().await.is_ok() {
                    log.lock().unwrap().acked.insert(n);
                }
            }
        })
    };

    let batch: Vec<Message> = (0..N)
        .map(|n| {
            Message::json(TOPIC, &n)
                .unwrap()
                .key(format!("k{}", n % KEYS))
        })
        .collect();
    bus.publish(batch).await.unwrap();

    // The child acks, then holds one: kill it there.
    let mut child_acked = HashSet::new();
    let held = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the child reports");
        match line.split_once(' ') {
            Some(("A", n)) => {
                child_acked.insert(n.parse::<u64>().unwrap());
            }
            Some(("H", n)) => break n.parse::<u64>().unwrap(),
            _ => panic!("unexpected child line {line:?}"),
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(child_acked.len() as u64, CHILD_ACKS);

    // The member left takes the child's partitions and everything it had
    // not acked once the brokers drop the dead member (its session
    // timeout). tansu 0.6 drops it but never tells the survivors to rejoin
    // (their heartbeats keep answering "no error"), so there a member that
    // joins afterwards (and leaves at once) sets the rebalance off.
    let _joiner = if support::on_tansu() {
        tokio::time::sleep(Duration::from_millis(u64::from(SESSION_MS) + 3_000)).await;
        let store = KafkaStore::open(config.clone()).await.unwrap();
        let sub = Bus::new(store.clone())
            .subscribe_raw("kill.nothing")
            .group(GROUP)
            .await
            .unwrap();
        Some((store, sub))
    } else {
        None
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let done = {
            let l = log.lock().unwrap();
            (0..N).all(|n| l.acked.contains(&n) || child_acked.contains(&n))
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events lost: {} of {N} acked by the member left, {} by the killed one",
            log.lock().unwrap().acked.len(),
            child_acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    member.await.unwrap();

    {
        let l = log.lock().unwrap();
        assert!(l.acked.contains(&held), "the held event {held} came again");
        for (key, seen) in &l.delivered {
            // First deliveries follow publish order; a repeat comes only where
            // an ack failed (its partition moved in a rebalance).
            let mut once = HashSet::new();
            let first: Vec<u64> = seen.iter().copied().filter(|n| once.insert(*n)).collect();
            assert!(
                first.windows(2).all(|w| w[0] < w[1]),
                "key {key} out of order: {first:?}"
            );
        }
        let again: Vec<u64> = l
            .acked
            .iter()
            .filter(|n| child_acked.contains(n))
            .copied()
            .collect();
        if bus.features().exact_resume {
            assert!(
                again.is_empty(),
                "events the killed member acked came again: {again:?}"
            );
        } else {
            println!(
                "member_kill: {} events the killed member acked came again (these brokers keep no commit metadata)",
                again.len()
            );
        }
    }
    store.close().await;
}

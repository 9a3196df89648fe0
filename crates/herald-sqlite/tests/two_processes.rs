//! Two processes open one store at once, both publish, and both consume
//! through one durable group: every event is handled exactly once (no lease
//! runs out here), by both processes between them, and each topic's seqs
//! have no gap.
//!
//! One executable plays every part: with `HERALD_TWO_CHILD=<store>` it is a
//! child.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload, StartPosition};
use herald_sqlite::{SqliteConfig, SqliteStore};

const EACH: u64 = 300;
const TOPIC: &str = "shared.jobs";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var("HERALD_TWO_CHILD") {
        Ok(path) => {
            let id: u64 = std::env::var("HERALD_TWO_ID")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            runtime.block_on(child(path, id));
        }
        Err(_) => {
            let (a, b) = parent();
            println!(
                "two_processes: {} events handled once each ({a} by one process, {b} by the other)",
                a + b
            );
        }
    }
}

/// Publish `EACH` events, consume the group until killed; report `A seq n`
/// after each ack.
async fn child(path: String, id: u64) {
    let store =
        SqliteStore::open(SqliteConfig::new(&path).poll_interval(Duration::from_millis(20)))
            .await
            .expect("child opens the store");
    let bus = Bus::new(store);
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group("shared")
        .start(StartPosition::Earliest)
        .await
        .expect("subscribe");
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let n = id * 1_000_000 + i;
                bus.publish(Message::new(TOPIC, Payload::json(&n).expect("json")))
                    .await
                    .expect("publish");
            }
        })
    };
    while let Some(Ok(d)) = sub.next().await {
        let (seq, n): (u64, u64) = (d.seq().expect("seq"), d.decode().expect("n"));
        d.ack().await.expect("ack");
        println!("A {seq} {n}");
    }
    let _ = publisher.await;
}

fn parent() -> (usize, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    // Create the store first so both children find it migrated.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { SqliteStore::open(SqliteConfig::new(&path)).await.map(drop) })
        .expect("create the store");
    let exe = std::env::current_exe().expect("own path");
    let (tx, rx) = mpsc::channel::<(usize, u64, u64)>();
    let mut children = Vec::new();
    for id in 0..2usize {
        let mut child = Command::new(&exe)
            .env("HERALD_TWO_CHILD", &path)
            .env("HERALD_TWO_ID", (id + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let ["A", seq, n] = line.split(' ').collect::<Vec<_>>().as_slice() {
                    let _ = tx.send((id, seq.parse().unwrap(), n.parse().unwrap()));
                }
            }
        });
        children.push(child);
    }
    let total = 2 * EACH as usize;
    let mut by_n: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut per_child = [0usize; 2];
    while by_n.len() < total {
        let (id, seq, n) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the children stalled");
        if let Some(first) = by_n.insert(n, (id, seq)) {
            panic!(
                "event {n} (seq {seq}) handled twice: by child {} and child {id}",
                first.0
            );
        }
        per_child[id] += 1;
    }
    for mut c in children {
        c.kill().expect("stop child");
        c.wait().expect("reap");
    }
    let mut seqs: Vec<u64> = by_n.values().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs 1..={total} without a gap"
    );
    assert!(
        per_child.iter().all(|n| *n > 0),
        "both processes handled events: {per_child:?}"
    );
    (per_child[0], per_child[1])
}

//! Crash safety: a child process publishing and consuming in a loop is
//! killed with SIGKILL at random moments, 20 times. After each kill the
//! store is checked: every publish that returned `Ok` is present exactly
//! once, no topic has a `seq` gap, and no event the group acked is delivered
//! to the group again.
//!
//! One executable plays both parts: run with `HERALD_CRASH_CHILD=<store>` it
//! is the child.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload, StartPosition};
use herald_sqlite::{SqliteConfig, SqliteStore};

const KILLS: u64 = 20;
const TOPIC: &str = "crash.orders";
const GROUP: &str = "crash-consumer";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var("HERALD_CRASH_CHILD") {
        Ok(path) => {
            let run: u64 = std::env::var("HERALD_CRASH_RUN")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            runtime.block_on(child(path, run));
        }
        Err(_) => {
            let (published, acked) = parent();
            println!(
                "crash: {KILLS} kills survived; {published} publishes returned Ok, {acked} acks"
            );
        }
    }
}

/// Publish and consume until killed, reporting on stdout: `P n seq` after a
/// publish returned Ok, `D seq attempt` on delivery, `A seq` after an ack
/// returned Ok.
async fn child(path: String, run: u64) {
    let store =
        SqliteStore::open(SqliteConfig::new(&path).poll_interval(Duration::from_millis(20)))
            .await
            .expect("child opens the store");
    let bus = Bus::new(store);
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group(GROUP)
        .start(StartPosition::Earliest)
        .ack_wait(Duration::from_millis(100))
        .await
        .expect("subscribe");
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let n = run * 1_000_000 + i;
                let seqs = bus
                    .publish(Message::new(TOPIC, Payload::json(&n).expect("json")))
                    .await
                    .expect("publish");
                println!("P {n} {}", seqs[0]);
            }
        })
    };
    while let Some(Ok(d)) = sub.next().await {
        let seq = d.seq().expect("seq");
        println!("D {seq} {}", d.attempt());
        d.ack().await.expect("ack");
        println!("A {seq}");
    }
    publisher.abort();
}

fn parent() -> (usize, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().expect("own path");
    let mut published: HashMap<u64, u64> = HashMap::new();
    let mut acked: HashSet<u64> = HashSet::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for run in 0..KILLS {
        let mut child = Command::new(&exe)
            .env("HERALD_CRASH_CHILD", &path)
            .env("HERALD_CRASH_RUN", (run + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 350));
        child.kill().expect("SIGKILL");
        let stdout = child.stdout.take().expect("stdout");
        child.wait().expect("reap");
        let mut acked_this_run = HashSet::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["P", n, seq] => {
                    published.insert(n.parse().unwrap(), seq.parse().unwrap());
                }
                ["D", seq, attempt] => {
                    let seq: u64 = seq.parse().unwrap();
                    assert!(
                        !acked.contains(&seq) && !acked_this_run.contains(&seq),
                        "run {run}: seq {seq} delivered again (attempt {attempt}) after the group acked it"
                    );
                }
                ["A", seq] => {
                    acked_this_run.insert(seq.parse::<u64>().unwrap());
                }
                _ => {}
            }
        }
        acked.extend(acked_this_run);
        check_store(&path, &published, run);
    }
    assert!(
        published.len() > 100,
        "the children published only {} events",
        published.len()
    );
    assert!(!acked.is_empty(), "the children acked nothing");
    (published.len(), acked.len())
}

/// Every `Ok` publish is stored exactly once, with the seq it returned, and
/// the topic's seqs are 1..=last without a gap.
fn check_store(path: &std::path::Path, published: &HashMap<u64, u64>, run: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(path))
            .await
            .expect("reopen after the kill");
        let mut stored: HashMap<u64, u64> = HashMap::new();
        let mut next = 1u64;
        loop {
            let page = store
                .replay(TOPIC, StartPosition::Seq(next), 5000)
                .await
                .expect("replay");
            if page.is_empty() {
                break;
            }
            for e in page {
                let seq = e.seq().unwrap();
                assert_eq!(seq, next, "run {run}: seq gap before {seq}");
                next += 1;
                let n: u64 = e.decode().unwrap();
                assert!(
                    stored.insert(n, seq).is_none(),
                    "run {run}: event {n} stored twice"
                );
            }
        }
        for (n, seq) in published {
            assert_eq!(
                stored.get(n),
                Some(seq),
                "run {run}: publish of {n} returned Ok (seq {seq}) but is not stored so"
            );
        }
        store.close().await;
    });
}

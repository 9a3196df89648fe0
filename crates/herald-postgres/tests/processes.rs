//! Five processes on one store: 2 publish 50,000 events each, 3 consume them
//! through one durable group (4 members each), and one consumer is
//! SIGKILLed mid-way. Every event is acked, none twice (so only unacked
//! events come again), and per key no event starts before an earlier one of
//! its key (checked by the consumers against a table in the same database;
//! unlogged, as it only needs to outlive the test, not a crash).
//!
//! One executable plays every part: with `HERALD_PG_ROLE` set it is a child.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};
use herald_postgres::{PgConfig, PgStore};

const PUBLISHERS: u64 = 2;
const CONSUMERS: usize = 3;
const MEMBERS: usize = 4;
const EACH: u64 = 50_000;
const BATCH: u64 = 100;
const KEYS: u64 = 64;
const TOPIC: &str = "proc.jobs";
const ACK_WAIT: Duration = Duration::from_secs(3);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var("HERALD_PG_ROLE").as_deref() {
        Ok("publisher") => runtime.block_on(publisher()),
        Ok("consumer") => runtime.block_on(consumer()),
        _ => {
            let started = Instant::now();
            let report = runtime.block_on(parent());
            println!("processes: {report} in {:.1?}", started.elapsed());
        }
    }
}

fn child_config() -> PgConfig {
    child_config_for(&std::env::var("HERALD_PG_SCHEMA").expect("schema"))
}

fn child_config_for(schema: &str) -> PgConfig {
    PgConfig::new(support::url()).schema(schema)
}

fn child_id() -> u64 {
    std::env::var("HERALD_PG_ID")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("id")
}

/// Publish `EACH` events in batches, keyed round-robin; print `P done`.
async fn publisher() {
    let bus = Bus::new(PgStore::open(child_config()).await.expect("open"));
    let id = child_id();
    for start in (0..EACH).step_by(BATCH as usize) {
        let batch: Vec<Message> = (start..start + BATCH)
            .map(|i| {
                let n = id * EACH + i;
                Message::json(TOPIC, &n)
                    .expect("json")
                    .key(format!("k{}", n % KEYS))
            })
            .collect();
        bus.publish(batch).await.expect("publish");
    }
    println!("P done");
}

/// Run `MEMBERS` members of group `g`; for each delivery, record its key's
/// latest `seq` (reporting an inversion), ack, print `A seq`.
async fn consumer() {
    let store = PgStore::open(child_config()).await.expect("open");
    let bus = Bus::new(store.clone());
    let mut workers = Vec::new();
    for _ in 0..MEMBERS {
        let mut sub = bus
            .subscribe_raw(TOPIC)
            .group("g")
            .start(StartPosition::Earliest)
            .ack_wait(ACK_WAIT)
            .await
            .expect("subscribe");
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let check = format!(
                "UPDATE \"{}\".key_check c SET last_seq = $2
                 FROM (SELECT key, last_seq FROM \"{}\".key_check WHERE key = $1 FOR UPDATE) o
                 WHERE c.key = o.key RETURNING o.last_seq",
                store.schema(),
                store.schema()
            );
            while let Some(d) = sub.next().await {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("consumer: {e}");
                        continue;
                    }
                };
                let seq = d.seq().expect("seq") as i64;
                let key = d.key().expect("key").to_owned();
                let before: i64 = sqlx::query_scalar(&check)
                    .bind(&key)
                    .bind(seq)
                    .fetch_one(store.pool())
                    .await
                    .expect("check");
                if before > seq {
                    println!("X {key} seq {seq} started after seq {before}");
                }
                println!("D {seq}");
                d.ack().await.expect("ack");
                println!("A {seq}");
            }
        }));
    }
    println!("READY");
    for w in workers {
        let _ = w.await;
    }
}

fn spawn(role: &str, schema: &str, id: usize, lines: &mpsc::Sender<(usize, String)>) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("HERALD_PG_ROLE", role)
        .env("HERALD_PG_SCHEMA", schema)
        .env("HERALD_PG_ID", id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    let lines = lines.clone();
    let who = if role == "consumer" { id } else { 100 + id };
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines.send((who, line));
        }
    });
    child
}

async fn parent() -> String {
    let config = support::fresh_config().await;
    let schema = config.schema_name().to_owned();
    let store = PgStore::open(config).await.expect("create the store");
    sqlx::query(&format!(
        "CREATE UNLOGGED TABLE \"{schema}\".key_check (key text PRIMARY KEY, last_seq bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .expect("check table");
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".key_check SELECT 'k' || i, 0 FROM generate_series(0, $1) i"
    ))
    .bind(KEYS as i64 - 1)
    .execute(store.pool())
    .await
    .expect("check rows");
    store.close().await;

    let (tx, rx) = mpsc::channel();
    let mut consumers: Vec<Child> = (0..CONSUMERS)
        .map(|id| spawn("consumer", &schema, id, &tx))
        .collect();
    let mut ready = 0;
    while ready < CONSUMERS {
        let (_, line) = rx.recv_timeout(Duration::from_secs(60)).expect("ready");
        ready += usize::from(line == "READY");
    }
    let mut publishers: Vec<Child> = (0..PUBLISHERS as usize)
        .map(|id| spawn("publisher", &schema, id, &tx))
        .collect();

    let total = (PUBLISHERS * EACH) as usize;
    let mut acked: HashSet<i64> = HashSet::with_capacity(total);
    // Delivered to consumer 0 and not reported acked by anyone: consumer 0
    // may have acked some of them without saying so before it was killed.
    let mut unreported: HashSet<i64> = HashSet::new();
    let mut per_consumer = [0usize; CONSUMERS];
    let mut published = 0;
    let mut killed = false;
    while acked.len() + unreported.len() < total || published < PUBLISHERS {
        let (who, line) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("stalled: {} of {total} acked", acked.len()));
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["A", seq] => {
                let seq: i64 = seq.parse().expect("seq");
                assert!(acked.insert(seq), "seq {seq} acked twice");
                unreported.remove(&seq);
                per_consumer[who] += 1;
            }
            ["D", seq] if who == 0 => {
                let seq: i64 = seq.parse().expect("seq");
                if !acked.contains(&seq) {
                    unreported.insert(seq);
                }
            }
            ["P", "done"] => published += 1,
            ["X", ..] => panic!("per-key order broken: {line}"),
            _ => {}
        }
        if !killed && per_consumer[0] >= 5_000 {
            consumers[0].kill().expect("SIGKILL consumer 0");
            consumers[0].wait().expect("reap");
            killed = true;
        }
    }
    assert!(killed, "consumer 0 was killed mid-way");
    for c in consumers.iter_mut().chain(publishers.iter_mut()) {
        let _ = c.kill();
        let _ = c.wait();
    }
    // What consumer 0 took and nobody reported acking: acked by consumer 0
    // before it died, or the group would have delivered it again.
    let bus = Bus::new(
        PgStore::open(child_config_for(&schema))
            .await
            .expect("reopen"),
    );
    let silent: Vec<i64> = unreported.into_iter().collect();
    for seq in &silent {
        let state = bus
            .delivery_state(TOPIC, *seq as u64, "g")
            .await
            .expect("delivery state");
        assert_eq!(state, herald::DeliveryState::Acked, "seq {seq}");
    }
    let mut seqs: Vec<i64> = acked.iter().chain(&silent).copied().collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(seqs.len(), total, "no event lost");
    assert_eq!(seqs.last(), Some(&(total as i64)), "no event lost");
    format!("{total} events acked once each, by consumer {per_consumer:?}; consumer 0 SIGKILLed")
}

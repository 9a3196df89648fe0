//! `herald bench --store sqlite:PATH`: the embedded store's append
//! throughput next to the same inserts done with raw SQL, at the same
//! durability (WAL, `synchronous=FULL`), in the same run. herald is driven by
//! [`TASKS`] concurrent publishers (its group commit at work); raw SQL by
//! rusqlite on one connection writing back to back, which is SQLite's ceiling
//! (concurrent raw writers only add lock contention). rusqlite is used here
//! only: it links the same libsqlite3 as sqlx.

use std::path::{Path, PathBuf};

use std::time::Instant;

use herald::{Envelope, Error, Message, Result};
use herald_sqlite::{SqliteConfig, SqliteStore};
use serde::Serialize;

use super::drain::{self, Drains};
use super::durable;
use super::progress;
use super::sample::{fresh, sample};
use super::stats::Percentiles;

/// Appends per second of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Appends {
    pub events: usize,
    /// herald: single publishes from [`TASKS`] concurrent tasks (group commit).
    pub herald_single: f64,
    /// Raw SQL (rusqlite): one row per transaction, one connection, back to back.
    pub raw_single: f64,
    /// herald: batches of [`BATCH`] events.
    pub herald_batched: f64,
    /// Raw SQL (rusqlite): [`BATCH`] rows per transaction, one connection,
    /// back to back (no lock contention: the raw ceiling).
    pub raw_batched: f64,
    pub ratio_single: f64,
    pub ratio_batched: f64,
    /// publish → a durable group member has it.
    pub end_to_end: Percentiles,
    /// The same with rusqlite ([`raw_end_to_end`]): a row committed →
    /// another connection has read it.
    pub raw_end_to_end: Percentiles,
    /// `raw_end_to_end.p50 / end_to_end.p50`.
    pub ratio_latency_p50: f64,
    /// How a durable group drains (receive + ack, committed), next to the
    /// raw consume ceiling (rusqlite, one connection: read rows and advance
    /// a cursor in one transaction, one row per commit and [`BATCH`] per
    /// commit, same durability).
    pub drain: Drains,
}

/// Concurrent publishing tasks.
pub const TASKS: usize = 64;
/// Events per batch.
pub const BATCH: usize = 100;

/// Run the store benchmark in files next to `path` (which must not exist).
pub async fn run(path: &Path, short: bool) -> Result<Appends> {
    let files = Files::new(path)?;
    let single = if short { 2_000 } else { 10_000 };
    let batched = if short { 20_000 } else { 200_000 };
    let sample = sample()?;
    progress("SQLite: appends, herald then raw");
    let herald_single = herald_appends(&files.herald("single"), single, 1, &sample).await?;
    let herald_batched = herald_appends(&files.herald("batched"), batched, BATCH, &sample).await?;
    let raw_single = raw_inserts(&files.raw("single"), single, 1, &sample).await?;
    let raw_batched = raw_inserts(&files.raw("batched"), batched, BATCH, &sample).await?;
    let rounds = if short { 200 } else { 1000 };
    let warmup = (rounds / 10).max(100);
    progress("SQLite: publish → group member latency, herald then raw");
    let end_to_end = end_to_end(&files.herald("latency"), rounds, warmup).await?;
    let raw_end_to_end = raw_end_to_end(&files.raw("latency"), rounds, warmup, &sample).await?;
    let consume = if short { 2_000 } else { 20_000 };
    progress("SQLite: raw consume loops");
    let raw_consume_1 = raw_consume(&files.raw("consume1"), consume / 4, 1, &sample).await?;
    let raw_consume_batched = raw_consume(&files.raw("consume"), consume, BATCH, &sample).await?;
    let drain = Drains::measure(
        if short { 2_000 } else { 20_000 },
        |label| {
            let path = files.herald(label);
            async move {
                let config = SqliteConfig::new(path).delivery(drain::settling()?);
                Ok(herald::Bus::new(SqliteStore::open(config).await?))
            }
        },
        (raw_consume_1, raw_consume_batched),
    )
    .await?;
    Ok(Appends {
        events: batched,
        herald_single,
        raw_single,
        herald_batched,
        raw_batched,
        ratio_single: herald_single / raw_single,
        ratio_batched: herald_batched / raw_batched,
        ratio_latency_p50: raw_end_to_end.p50_us / end_to_end.p50_us,
        end_to_end,
        raw_end_to_end,
        drain,
    })
}

async fn herald_appends(
    path: &Path,
    events: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let store = SqliteStore::open(SqliteConfig::new(path)).await?;
    let sample = sample.clone();
    durable::rate(events, TASKS, batch, move |n| {
        let (store, sample) = (store.clone(), sample.clone());
        async move {
            store
                .append((0..n).map(|_| fresh(&sample)).collect())
                .await
                .map(|_| ())
        }
    })
    .await
}

/// Publish one event and wait until a durable group member has it; the
/// sample is publish start → receipt.
async fn end_to_end(path: &Path, rounds: usize, warmup: usize) -> Result<Percentiles> {
    let bus = herald::Bus::new(SqliteStore::open(SqliteConfig::new(path)).await?);
    let mut sub = bus.subscribe_raw("bench.latency").group("bench").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = futures_util::StreamExt::next(&mut sub).await {
            let at = Instant::now();
            if d.ack().await.is_err() || tx.send(at).is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::with_capacity(warmup + rounds);
    for i in 0..warmup + rounds {
        let start = Instant::now();
        bus.publish(Message::json("bench.latency", &i)?).await?;
        let at = rx
            .recv()
            .await
            .ok_or_else(|| Error::internal("the durable subscriber stopped"))?;
        samples.push(at.saturating_duration_since(start));
    }
    bus.close().await?;
    Ok(Percentiles::of(samples, warmup))
}

/// The raw latency floor at herald's durability: rusqlite, one connection
/// committing a row at a time, another (its own thread) told of each
/// commit, reading the row past its cursor, then moving the cursor in a
/// committed transaction (as a member acks) before the next row is
/// written; the sample is insert start → the row read.
async fn raw_end_to_end(
    path: &Path,
    rounds: usize,
    warmup: usize,
    sample: &Envelope,
) -> Result<Percentiles> {
    let json = sample.clone().with_seq(1).to_json()?;
    let reader_path = path.to_path_buf();
    let samples = raw(path, "latency", move |conn| {
        conn.execute_batch(&consume_tables("latency"))?;
        let (written, to_read) = std::sync::mpsc::channel::<()>();
        let (read, to_time) = std::sync::mpsc::channel::<Instant>();
        let mut samples = Vec::with_capacity(warmup + rounds);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> rusqlite::Result<()> {
                let mut conn = rusqlite::Connection::open(&reader_path)?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                let mut cursor = 0i64;
                while to_read.recv().is_ok() {
                    let (pos, bytes): (i64, Vec<u8>) = conn.query_row(
                        "SELECT pos, envelope FROM events WHERE pos > ?1 ORDER BY pos LIMIT 1",
                        [cursor],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?;
                    let at = Instant::now();
                    std::hint::black_box(bytes);
                    cursor = pos;
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.prepare_cached("UPDATE cursors SET pos = ?1 WHERE name = 'latency'")?
                        .execute([cursor])?;
                    tx.commit()?;
                    if read.send(at).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            let mut insert = conn.prepare_cached(
                "INSERT INTO events (topic, seq, envelope) VALUES ('bench.latency', ?1, ?2)",
            )?;
            for seq in 1..=(warmup + rounds) as i64 {
                let start = Instant::now();
                insert.execute(rusqlite::params![seq, json])?;
                written.send(()).ok();
                let Ok(at) = to_time.recv() else { break };
                samples.push(at.saturating_duration_since(start));
            }
            drop(written);
            reader.join().expect("the raw reader does not panic")
        })?;
        Ok(samples)
    })
    .await?;
    if samples.len() < warmup + rounds {
        return Err(Error::internal("the raw SQLite reader stopped early"));
    }
    Ok(Percentiles::of(samples, warmup))
}

/// The embedded store's drain in `herald bench` (and its `--check` gate):
/// one handler at its defaults draining `events` over [`drain::KEYS`]
/// keys, next to the raw 100-rows-per-commit consume loop, in files under
/// the system's temporary directory.
#[derive(Debug, Clone, Serialize)]
pub struct DrainGate {
    pub events: usize,
    pub handler: f64,
    pub raw_batched: f64,
    pub ratio: f64,
}

/// Measure [`DrainGate`] with `events` events.
pub async fn drain_gate(events: usize) -> Result<DrainGate> {
    let base = std::env::temp_dir().join(format!(
        "herald-bench-{}-{}.db",
        std::process::id(),
        uuid::Uuid::now_v7()
    ));
    let files = Files::new(&base)?;
    let sample = sample()?;
    let raw_batched = raw_consume(&files.raw("consume"), events, BATCH, &sample).await?;
    let bus = herald::Bus::new(SqliteStore::open(SqliteConfig::new(files.herald("drain"))).await?);
    let awaited = drain::Consumer::Handler { await_acks: true };
    let handler = drain::keyed_drain(
        std::slice::from_ref(&bus),
        "bench.drain",
        events,
        1,
        Some(drain::KEYS),
        awaited,
    )
    .await;
    bus.close().await?;
    let handler = handler?;
    Ok(DrainGate {
        events,
        handler,
        raw_batched,
        ratio: handler / raw_batched,
    })
}

/// The raw consume ceiling: rusqlite on one connection over a log of
/// `events` rows (written first, untimed), reading `batch` rows past a
/// group's cursor and moving the cursor past them in one transaction, back
/// to back, at herald's durability (WAL, `synchronous=FULL`).
async fn raw_consume(path: &Path, events: usize, batch: usize, sample: &Envelope) -> Result<f64> {
    let json = sample.clone().with_seq(1).to_json()?;
    raw(path, "consume", move |mut conn| {
        conn.execute_batch(&consume_tables("drain"))?;
        {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (topic, seq, envelope) VALUES ('bench.drain', ?1, ?2)",
                )?;
                for seq in 1..=events as i64 {
                    insert.execute(rusqlite::params![seq, json])?;
                }
            }
            tx.commit()?;
        }
        let start = Instant::now();
        let (mut cursor, mut read, mut bytes) = (0i64, 0usize, 0usize);
        while read < events {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut rows = tx.prepare_cached(
                    "SELECT pos, envelope FROM events WHERE pos > ?1 ORDER BY pos LIMIT ?2",
                )?;
                let mut found = rows.query(rusqlite::params![cursor, batch as i64])?;
                while let Some(row) = found.next()? {
                    cursor = row.get(0)?;
                    bytes += row.get_ref(1)?.as_blob()?.len();
                    read += 1;
                }
                tx.prepare_cached("UPDATE cursors SET pos = ?1 WHERE name = 'drain'")?
                    .execute([cursor])?;
            }
            tx.commit()?;
        }
        std::hint::black_box(bytes);
        Ok(read as f64 / start.elapsed().as_secs_f64())
    })
    .await
}

/// The raw consume baselines' tables: a log, and a cursor named `cursor`
/// at its start.
fn consume_tables(cursor: &str) -> String {
    format!(
        "CREATE TABLE events (pos INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, seq INTEGER NOT NULL,
         envelope BLOB NOT NULL, UNIQUE (topic, seq));
         CREATE TABLE cursors (name TEXT PRIMARY KEY, pos INTEGER NOT NULL);
         INSERT INTO cursors VALUES ('{cursor}', 0);"
    )
}

/// Run a raw baseline's `work` on its own rusqlite connection to `path`,
/// at herald's durability (WAL, `synchronous=FULL`), off the runtime.
async fn raw<T: Send + 'static>(
    path: &Path,
    what: &'static str,
    work: impl FnOnce(rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T> {
    let path = path.to_path_buf();
    let run = move || -> rusqlite::Result<T> {
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        work(conn)
    };
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::internal(format!("raw SQLite {what} baseline: {e}")))
}

/// The raw ceiling: rusqlite (no async layer) on one connection, a prepared
/// INSERT per row, `batch` rows per transaction, back to back.
async fn raw_inserts(path: &Path, events: usize, batch: usize, sample: &Envelope) -> Result<f64> {
    let rows: Vec<(i64, i64, String, Vec<u8>)> = (1..=events as i64)
        .map(|s| {
            let e = fresh(sample);
            let key = e.idempotency_key().into_owned();
            let ms = e.timestamp().timestamp_millis();
            e.with_seq(s as u64).to_json().map(|j| (s, ms, key, j))
        })
        .collect::<Result<_>>()?;
    raw(path, "insert", move |mut conn| {
        conn.execute_batch(
            "CREATE TABLE events (pos INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, seq INTEGER NOT NULL,
             created_ms INTEGER NOT NULL, appended_ms INTEGER NOT NULL, idempotency_key TEXT NOT NULL,
             envelope BLOB NOT NULL, UNIQUE (topic, seq));
             CREATE INDEX events_by_idempotency_key ON events (topic, idempotency_key);
             CREATE INDEX events_by_time ON events (topic, created_ms);",
        )?;
        let start = Instant::now();
        for chunk in rows.chunks(batch) {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (topic, seq, created_ms, appended_ms, idempotency_key, envelope)
                     VALUES ('bench.orders', ?1, ?2, ?2, ?3, ?4)",
                )?;
                for (seq, ms, key, json) in chunk {
                    insert.execute(rusqlite::params![seq, ms, key, json])?;
                }
            }
            tx.commit()?;
        }
        Ok(rows.len() as f64 / start.elapsed().as_secs_f64())
    })
    .await
}

/// The benchmark's database files, removed when done.
struct Files {
    base: PathBuf,
    made: std::sync::Mutex<Vec<PathBuf>>,
}

impl Files {
    fn new(path: &Path) -> Result<Files> {
        if path.exists() {
            return Err(Error::validation(format!(
                "--store sqlite:{}: the file exists; the benchmark only writes new files",
                path.display()
            )));
        }
        Ok(Files {
            base: path.to_path_buf(),
            made: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn herald(&self, what: &str) -> PathBuf {
        self.file(&format!("herald-{what}"))
    }

    fn raw(&self, what: &str) -> PathBuf {
        self.file(&format!("raw-{what}"))
    }

    fn file(&self, suffix: &str) -> PathBuf {
        let mut name = self.base.as_os_str().to_owned();
        name.push(format!(".{suffix}"));
        let p = PathBuf::from(name);
        self.made.lock().expect("not poisoned").push(p.clone());
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in self.made.lock().map(|m| m.clone()).unwrap_or_default() {
            for ext in ["", "-wal", "-shm"] {
                let mut f = p.as_os_str().to_owned();
                f.push(ext);
                let _ = std::fs::remove_file(PathBuf::from(f));
            }
        }
    }
}

//! `herald bench --store postgres://…`: the PostgreSQL store's outbox
//! publishes next to the same inserts done with raw sqlx, in the same run
//! and the same database, from [`TASKS`] concurrent tasks, one transaction
//! per publish (single) or per [`BATCH`] events; the sequencer's rate at
//! turning outbox rows into events; publish-commit → durable group member
//! latency (woken by LISTEN/NOTIFY); and how fast a group drains a backlog,
//! next to a raw pgmq-style consume loop.
//! Everything runs in schemas of its own, dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, Envelope, Error, Message, Result, StartPosition};
use herald_postgres::{PgConfig, PgStore};
use serde::Serialize;

use super::drain::Drains;
use super::durable;
use super::progress;
use super::sample::{fresh, sample};
use super::stats::Percentiles;

/// What the PostgreSQL run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PgFigures {
    pub events: usize,
    /// herald outbox publishes/s, one event per transaction.
    pub herald_single: f64,
    /// raw sqlx inserts/s of the same rows, one per transaction.
    pub raw_single: f64,
    /// herald outbox events/s in transactions of [`BATCH`].
    pub herald_batched: f64,
    /// raw sqlx rows/s in transactions of [`BATCH`].
    pub raw_batched: f64,
    pub ratio_single: f64,
    pub ratio_batched: f64,
    /// Events/s the sequencer turned into log events while the batched
    /// publishers ran and until it caught up.
    pub sequenced_per_second: f64,
    /// Outbox publish committed → a durable group member has it.
    pub end_to_end: Percentiles,
    /// The same with raw sqlx ([`raw_end_to_end`]): a queue row and its
    /// NOTIFY committed → a LISTENing consumer has read it, pgmq's way.
    pub raw_end_to_end: Percentiles,
    /// `raw_end_to_end.p50 / end_to_end.p50`.
    pub ratio_latency_p50: f64,
    /// How a durable group drains (receive + ack, committed), next to the
    /// raw consume loop ([`raw_consume`]) at one row and [`BATCH`] rows
    /// per commit.
    pub drain: Option<Drains>,
}

/// Concurrent publishing tasks.
pub const TASKS: usize = 32;
/// Events per batch.
pub const BATCH: usize = 100;

/// Run the benchmark against `url`.
pub async fn run(url: &str, short: bool) -> Result<PgFigures> {
    let schema = format!(
        "herald_bench_{}_{:06x}",
        std::process::id(),
        fastrand::u32(..1 << 24)
    );
    let config = PgConfig::new(url)
        .schema(&schema)
        .pool_size(TASKS as u32 + 8);
    let store = PgStore::open(config.clone()).await?;
    let result = measure(&store, &schema, short).await;
    store.close().await;
    drop_schema(url, &schema).await;
    let mut figures = result?;
    let consume = if short { 2_000 } else { 20_000 };
    progress("PostgreSQL: raw consume, pgmq's way");
    let raw_1 = raw_consume(url, &format!("{schema}_raw1"), consume / 10, 1).await?;
    let raw_batched = raw_consume(url, &format!("{schema}_raw"), consume, BATCH).await?;
    let schemas = std::sync::Mutex::new(Vec::new());
    let drain = Drains::measure(
        if short { 2_000 } else { 20_000 },
        |label| {
            let schema = format!("{schema}_{label}");
            schemas.lock().expect("not poisoned").push(schema.clone());
            let config = config.clone().schema(&schema);
            async move {
                let config = config.delivery(super::drain::settling()?);
                Ok(Bus::new(PgStore::open(config).await?))
            }
        },
        (raw_1, raw_batched),
    )
    .await;
    for schema in schemas.into_inner().expect("not poisoned") {
        drop_schema(url, &schema).await;
    }
    figures.drain = Some(drain?);
    Ok(figures)
}

/// The raw consume ceiling, pgmq's way on one connection: a queue table of
/// `events` rows (written first, untimed), then back to back `DELETE …
/// WHERE id IN (SELECT … ORDER BY id LIMIT batch FOR UPDATE SKIP LOCKED)
/// RETURNING` — read and removed in one committed transaction — until it
/// is empty: rows/s.
async fn raw_consume(url: &str, schema: &str, events: usize, batch: usize) -> Result<f64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(pg)?;
    let sample = sample()?.with_seq(1).to_json()?;
    let setup = [
        format!("CREATE SCHEMA \"{schema}\""),
        format!(
            "CREATE TABLE \"{schema}\".queue (id bigserial PRIMARY KEY, envelope bytea NOT NULL)"
        ),
        format!(
            "INSERT INTO \"{schema}\".queue (envelope) SELECT $1 FROM generate_series(1, {events})"
        ),
    ];
    let consumed = async {
        for (i, sql) in setup.iter().enumerate() {
            let query = sqlx::query(sql);
            let query = if i == setup.len() - 1 {
                query.bind(&sample)
            } else {
                query
            };
            query.execute(&pool).await.map_err(pg)?;
        }
        let pop = format!(
            "DELETE FROM \"{schema}\".queue WHERE id IN
             (SELECT id FROM \"{schema}\".queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, envelope"
        );
        let start = Instant::now();
        let mut read = 0;
        loop {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&pop)
                .bind(batch as i64)
                .fetch_all(&pool)
                .await
                .map_err(pg)?;
            if rows.is_empty() {
                break;
            }
            read += rows.len();
        }
        Ok::<_, Error>(read as f64 / start.elapsed().as_secs_f64())
    }
    .await;
    pool.close().await;
    drop_schema(url, schema).await;
    consumed
}

async fn measure(store: &PgStore, schema: &str, short: bool) -> Result<PgFigures> {
    // Whole batches for every task, so the counts are exact.
    let single = TASKS * if short { 64 } else { 320 };
    let batched = TASKS * BATCH * if short { 6 } else { 32 };
    let sample = sample()?;
    raw_table(store, schema).await?;
    // Each raw run starts once the sequencer has caught up, so it does not
    // compete with herald's leftover work.
    progress("PostgreSQL: publishes one per transaction, herald then raw");
    let herald_single = herald_publishes(store, single, 1, &sample).await?;
    wait_sequenced(store, single as u64).await?;
    let raw_single = raw_inserts(store, schema, single, 1, &sample).await?;
    progress("PostgreSQL: publishes in batches, herald then raw");
    let began = Instant::now();
    let herald_batched = herald_publishes(store, batched, BATCH, &sample).await?;
    wait_sequenced(store, (single + batched) as u64).await?;
    let sequenced_per_second = batched as f64 / began.elapsed().as_secs_f64();
    let raw_batched = raw_inserts(store, schema, batched, BATCH, &sample).await?;
    let rounds = if short { 200 } else { 1000 };
    let warmup = (rounds / 10).max(50);
    progress("PostgreSQL: commit → group member latency, herald then raw");
    let end_to_end = end_to_end(store, rounds, warmup).await?;
    let raw_end_to_end = raw_end_to_end(store, schema, rounds, warmup).await?;
    Ok(PgFigures {
        events: batched,
        herald_single,
        raw_single,
        herald_batched,
        raw_batched,
        ratio_single: herald_single / raw_single,
        ratio_batched: herald_batched / raw_batched,
        sequenced_per_second,
        ratio_latency_p50: raw_end_to_end.p50_us / end_to_end.p50_us,
        end_to_end,
        raw_end_to_end,
        drain: None,
    })
}

/// [`TASKS`] tasks each committing transactions of `batch` outbox publishes.
async fn herald_publishes(
    store: &PgStore,
    events: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let (store, sample) = (store.clone(), sample.clone());
    durable::rate(events, TASKS, batch, move |n| {
        let (store, sample) = (store.clone(), sample.clone());
        async move {
            let mut tx = store.pool().begin().await.map_err(pg)?;
            store
                .publish_in(&mut tx, (0..n).map(|_| fresh(&sample)).collect())
                .await?;
            tx.commit().await.map_err(pg)
        }
    })
    .await
}

async fn raw_table(store: &PgStore, schema: &str) -> Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".raw (id bigserial PRIMARY KEY, envelope_id uuid NOT NULL,
         topic text NOT NULL, idempotency_key text NOT NULL, envelope bytea NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .map_err(pg)?;
    Ok(())
}

/// The same rows inserted with plain sqlx: one `UNNEST` insert per
/// transaction of `batch`, [`TASKS`] tasks.
async fn raw_inserts(
    store: &PgStore,
    schema: &str,
    events: usize,
    batch: usize,
    sample: &Envelope,
) -> Result<f64> {
    let sql = Arc::new(format!(
        "INSERT INTO \"{schema}\".raw (envelope_id, topic, idempotency_key, envelope)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[])"
    ));
    let (pool, sample) = (store.pool().clone(), sample.clone());
    durable::rate(events, TASKS, batch, move |n| {
        let (pool, sample, sql) = (pool.clone(), sample.clone(), sql.clone());
        async move {
            let envs: Vec<Envelope> = (0..n).map(|_| fresh(&sample)).collect();
            let ids: Vec<_> = envs.iter().map(|e| e.id()).collect();
            let topics: Vec<String> = envs.iter().map(|e| e.topic().to_string()).collect();
            let keys: Vec<String> = envs
                .iter()
                .map(|e| e.idempotency_key().into_owned())
                .collect();
            let bodies = envs
                .iter()
                .map(|e| e.to_json())
                .collect::<Result<Vec<_>>>()?;
            let mut tx = pool.begin().await.map_err(pg)?;
            sqlx::query(&sql)
                .bind(&ids)
                .bind(&topics)
                .bind(&keys)
                .bind(&bodies)
                .execute(&mut *tx)
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)
        }
    })
    .await
}

/// Wait until `bench.orders` has `n` events.
async fn wait_sequenced(store: &PgStore, n: u64) -> Result<()> {
    let topic = "bench.orders".parse()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while store.last_seq(&topic).await?.unwrap_or(0) < n {
        if Instant::now() > deadline {
            return Err(Error::internal(
                "the sequencer did not catch up within 300 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Commit one outbox publish and wait until a durable group member has it.
async fn end_to_end(store: &PgStore, rounds: usize, warmup: usize) -> Result<Percentiles> {
    let bus = Bus::new(store.clone());
    let mut sub = bus
        .subscribe_raw("bench.latency")
        .group("bench.latency")
        .start(StartPosition::Latest)
        .await?;
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
        let prepared = bus.prepare(Message::json("bench.latency", &i)?)?;
        let mut txn = store.pool().begin().await.map_err(pg)?;
        store.publish_in(&mut txn, prepared).await?;
        txn.commit().await.map_err(pg)?;
        let committed = Instant::now();
        let at = rx
            .recv()
            .await
            .ok_or_else(|| Error::internal("the subscriber stopped"))?;
        samples.push(at.saturating_duration_since(committed));
    }
    Ok(Percentiles::of(samples, warmup))
}

/// The raw latency floor, pgmq's way with NOTIFY: a transaction inserts a
/// queue row and notifies, and a consumer LISTENing on a connection of its
/// own, when notified, takes the row with pgmq's read-and-remove (`DELETE
/// … FOR UPDATE SKIP LOCKED … RETURNING`, committed) on another; the sample
/// is commit → the row read. As in herald's path, one synchronous commit
/// lies between the publisher's and the consumer having the row (herald's
/// is the sequencer's).
async fn raw_end_to_end(
    store: &PgStore,
    schema: &str,
    rounds: usize,
    warmup: usize,
) -> Result<Percentiles> {
    let channel = format!("{schema}_raw_latency");
    let table = format!("{schema}.raw_latency");
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, envelope bytea NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .map_err(pg)?;
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool())
        .await
        .map_err(pg)?;
    listener.listen(&channel).await.map_err(pg)?;
    let mut popper = store.pool().acquire().await.map_err(pg)?;
    let pop = format!(
        "DELETE FROM {table} WHERE id IN
         (SELECT id FROM {table} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, envelope"
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        while listener.recv().await.is_ok() {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&pop)
                .fetch_all(&mut *popper)
                .await
                .map_err(pg)?;
            let at = Instant::now();
            if !rows.is_empty() && tx.send(at).is_err() {
                break;
            }
        }
        Ok::<_, Error>(())
    });
    let sample = sample()?.with_seq(1).to_json()?;
    let insert = format!("INSERT INTO {table} (envelope) VALUES ($1)");
    let mut samples = Vec::with_capacity(warmup + rounds);
    for _ in 0..warmup + rounds {
        let mut txn = store.pool().begin().await.map_err(pg)?;
        sqlx::query(&insert)
            .bind(&sample)
            .execute(&mut *txn)
            .await
            .map_err(pg)?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&mut *txn)
            .await
            .map_err(pg)?;
        txn.commit().await.map_err(pg)?;
        let committed = Instant::now();
        let Some(at) = rx.recv().await else { break };
        samples.push(at.saturating_duration_since(committed));
    }
    drop(rx);
    consumer.abort();
    if samples.len() < warmup + rounds {
        return match consumer.await {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::internal("the raw consumer stopped")),
        };
    }
    Ok(Percentiles::of(samples, warmup))
}

async fn drop_schema(url: &str, schema: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

fn pg(e: sqlx::Error) -> Error {
    Error::new(herald::ErrorCode::Unavailable, format!("postgres: {e}"))
}

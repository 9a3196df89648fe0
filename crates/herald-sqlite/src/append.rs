//! Appending to the log: sequencing and dedupe.
//!
//! Owns the SQL that turns validated envelopes into `events` rows inside a
//! write transaction (the `writer` runs it, group-committing concurrent
//! publishes). SQLite serializes writers, so `seq = last_seq + 1` read and written
//! inside the transaction is gap-free across tasks and processes, and a
//! rolled-back transaction leaves no hole.

use std::collections::HashMap;

use herald::{Envelope, Error, ErrorCode, Result};
use sqlx::SqliteConnection;

use crate::store::runtime_error;

/// Highest `seq` SQLite's signed 64-bit integers hold.
const MAX_SEQ: u64 = i64::MAX as u64;
/// Rows per multi-row statement (10 parameters each, well under SQLite's
/// 32,766-parameter limit).
const ROWS_PER_STATEMENT: usize = 500;

/// Append `batches` (each one publish) inside the caller's open write
/// transaction.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    batches: &[&[Envelope]],
    dedupe_window_ms: i64,
) -> Result<Appended> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let all: Vec<&Envelope> = batches.iter().flat_map(|b| b.iter()).collect();
    let mut last_seq = topic_seqs(conn, &all).await?;
    let mut seen = if dedupe_window_ms > 0 {
        existing_keys(conn, &all, now_ms - dedupe_window_ms).await?
    } else {
        HashMap::new()
    };
    let mut rows: Vec<Row> = Vec::with_capacity(all.len());
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut seqs = Vec::with_capacity(batch.len());
        for env in batch.iter() {
            let idem = env.idempotency_key();
            let dedupe_key = (env.topic().as_str().to_owned(), idem.into_owned());
            if dedupe_window_ms > 0 {
                if let Some(seq) = seen.get(&dedupe_key) {
                    seqs.push(*seq);
                    continue;
                }
            }
            let last = last_seq.entry(env.topic().as_str().to_owned()).or_insert(0);
            if *last >= MAX_SEQ {
                return Err(Error::internal(format!(
                    "sequence of `{}` is exhausted",
                    env.topic()
                )));
            }
            *last += 1;
            let seq = *last;
            let stored = env.clone().with_seq(seq).with_attempt(1);
            rows.push(Row {
                key: env.key().map(str::to_owned),
                kind: herald::group::kind_code(env.kind()),
                priority: herald::group::priority_code(env.priority()),
                expires_ms: env.expires_at().map(|t| t.timestamp_millis()),
                created_ms: env.timestamp().timestamp_millis(),
                envelope: stored.to_json()?,
                seq,
                topic: dedupe_key.0.clone(),
                idempotency_key: dedupe_key.1.clone(),
            });
            if dedupe_window_ms > 0 {
                seen.insert(dedupe_key, seq);
            }
            seqs.push(seq);
        }
        out.push(seqs);
    }
    if rows.is_empty() {
        return Ok(Appended {
            seqs: out,
            last_pos: None,
        });
    }
    let mut last_pos = None;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO events (topic, seq, created_ms, appended_ms, idempotency_key, key, kind, priority, expires_ms, envelope) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(&r.topic)
                .push_bind(r.seq as i64)
                .push_bind(r.created_ms)
                .push_bind(now_ms)
                .push_bind(&r.idempotency_key)
                .push_bind(&r.key)
                .push_bind(r.kind)
                .push_bind(r.priority)
                .push_bind(r.expires_ms)
                .push_bind(&r.envelope);
        });
        let done = q.build().execute(&mut *conn).await.map_err(runtime_error)?;
        last_pos = Some(done.last_insert_rowid());
    }
    let touched: Vec<(&String, &u64)> = last_seq.iter().collect();
    for chunk in touched.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::new("INSERT INTO topics (name, last_seq) ");
        q.push_values(chunk, |mut b, (name, seq)| {
            b.push_bind(*name).push_bind(**seq as i64);
        });
        q.push(" ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq");
        q.build().execute(&mut *conn).await.map_err(runtime_error)?;
    }
    Ok(Appended {
        seqs: out,
        last_pos,
    })
}

/// What [`append`] did: each batch's seqs, and the `pos` of the last event
/// it inserted (the highest: `pos` grows with every insert), if any.
pub(crate) struct Appended {
    pub(crate) seqs: Vec<Vec<u64>>,
    pub(crate) last_pos: Option<i64>,
}

struct Row {
    topic: String,
    key: Option<String>,
    kind: i64,
    priority: i64,
    expires_ms: Option<i64>,
    seq: u64,
    created_ms: i64,
    idempotency_key: String,
    envelope: Vec<u8>,
}

/// `last_seq` of every topic in `envs` that has one.
async fn topic_seqs(
    conn: &mut SqliteConnection,
    envs: &[&Envelope],
) -> Result<HashMap<String, u64>> {
    let mut names: Vec<&str> = envs.iter().map(|e| e.topic().as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = HashMap::with_capacity(names.len());
    for chunk in names.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::new("SELECT name, last_seq FROM topics WHERE name IN (");
        let mut list = q.separated(", ");
        for n in chunk {
            list.push_bind(*n);
        }
        q.push(")");
        let rows: Vec<(String, i64)> = q
            .build_query_as()
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
        out.extend(rows.into_iter().map(|(n, s)| (n, s as u64)));
    }
    Ok(out)
}

/// `(topic, idempotency_key) → seq` of the keys in `envs` appended since
/// `since_ms`; one indexed lookup per topic (`topic = ? AND key IN (…)`).
async fn existing_keys(
    conn: &mut SqliteConnection,
    envs: &[&Envelope],
    since_ms: i64,
) -> Result<HashMap<(String, String), u64>> {
    let mut by_topic: HashMap<&str, Vec<String>> = HashMap::new();
    for e in envs {
        by_topic
            .entry(e.topic().as_str())
            .or_default()
            .push(e.idempotency_key().into_owned());
    }
    let mut out = HashMap::new();
    for (topic, keys) in by_topic {
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT idempotency_key, min(seq) FROM events WHERE topic = ",
            );
            q.push_bind(topic);
            q.push(" AND idempotency_key IN (");
            let mut list = q.separated(", ");
            for k in chunk {
                list.push_bind(k.as_str());
            }
            q.push(") AND appended_ms >= ");
            q.push_bind(since_ms);
            q.push(" GROUP BY idempotency_key");
            let rows: Vec<(String, i64)> = q
                .build_query_as()
                .fetch_all(&mut *conn)
                .await
                .map_err(runtime_error)?;
            out.extend(
                rows.into_iter()
                    .map(|(k, s)| ((topic.to_owned(), k), s as u64)),
            );
        }
    }
    Ok(out)
}

/// The error of a publish after the store closed.
pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the SQLite store is closed")
}

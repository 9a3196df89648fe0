//! The event log: appending to it and reading where a subscription starts.
//!
//! Owns the SQL that turns validated envelopes into `events` rows inside a
//! write transaction (the `writer` runs it, group-committing concurrent
//! publishes; the outbox and group settlements run it in theirs): sequencing
//! and dedupe. SQLite serializes writers, so `seq = last_seq + 1` read and
//! written inside the transaction is gap-free across tasks and processes, and
//! a rolled-back transaction leaves no hole. Also owns the one `dead_letters`
//! row insert, which the writer's and a group settlement's transactions run
//! (so it sits here, below `group`), and [`first_wanted`], the index lookup
//! that positions a new group or tail. Does not own the writer task
//! (`writer`), replay and the other reads for inspection (`inspect`), or
//! listing dead letters (`dead_letters`).

use std::collections::HashMap;

use herald::backend::group::Position;
use herald::{DeadLetter, Envelope, Error, Result, SubscribeSpec};
use sqlx::SqliteConnection;

use crate::conn::runtime_error;

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
                kind: herald::backend::group::kind_code(env.kind()),
                priority: herald::backend::group::priority_code(env.priority()),
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

/// Store `letter` in the caller's open write transaction (its `id` is
/// assigned here; the one given is ignored).
pub(crate) async fn insert_dead_letter(
    conn: &mut SqliteConnection,
    letter: &DeadLetter,
) -> Result<()> {
    let env = &letter.envelope;
    sqlx::query(
        "INSERT INTO dead_letters (topic, seq, grp, code, reason, attempts, source, first_failed_ms, failed_ms, correlation_id, envelope)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(env.topic().as_str())
    .bind(env.seq().map(|s| s as i64))
    .bind(letter.group.as_deref())
    .bind(letter.code.as_str())
    .bind(&letter.reason)
    .bind(letter.attempts as i64)
    .bind(letter.source.as_str())
    .bind(letter.first_failed_at.timestamp_millis())
    .bind(letter.failed_at.timestamp_millis())
    .bind(env.correlation_id().to_string())
    .bind(env.to_json()?)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// The lowest `pos` a new group at `position` may want: per topic its
/// patterns match, the first event at or after its start, by the
/// `(topic, seq)` index (or `(topic, created_ms)` for a time start). Costs a
/// scan of the topic names and one index lookup per matching topic,
/// whatever the number of events.
pub(crate) async fn first_wanted(
    conn: &mut SqliteConnection,
    spec: &SubscribeSpec,
    position: &Position,
) -> Result<Option<i64>> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM topics")
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let mut first: Option<i64> = None;
    for name in names
        .iter()
        .filter(|t| spec.patterns.iter().any(|p| p.matches_str(t)))
    {
        let pos: Option<i64> = match position.start_ms {
            Some(ms) => sqlx::query_scalar(FIRST_BY_TIME)
                .bind(name)
                .bind(ms)
                .fetch_one(&mut *conn)
                .await
                .map_err(runtime_error)?,
            None => sqlx::query_scalar(FIRST_BY_SEQ)
                .bind(name)
                .bind(position.start_seq.unwrap_or(1))
                .fetch_optional(&mut *conn)
                .await
                .map_err(runtime_error)?,
        };
        first = match (first, pos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// A topic's first event at or after a `seq` (`pos` grows with `seq`).
const FIRST_BY_SEQ: &str =
    "SELECT pos FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT 1";
/// A topic's first event (lowest `pos`) created at or after a time.
const FIRST_BY_TIME: &str = "SELECT min(pos) FROM events WHERE topic = ? AND created_ms >= ?";

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The plan SQLite makes for `sql`, one line per step.
    async fn plan_of(conn: &mut SqliteConnection, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind("a.b")
                .bind(1_i64)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn positioning_a_group_is_an_index_lookup_per_topic() {
        let conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let mut conn = crate::schema::migrate(conn, ":memory:".into())
            .await
            .unwrap();
        for sql in [FIRST_BY_SEQ, FIRST_BY_TIME] {
            let plan = plan_of(&mut conn, sql).await;
            assert!(plan.contains("SEARCH events USING"), "{sql}:\n{plan}");
            assert!(plan.contains("INDEX"), "{sql}:\n{plan}");
            assert!(!plan.contains("SCAN events"), "{sql}:\n{plan}");
        }
    }
}

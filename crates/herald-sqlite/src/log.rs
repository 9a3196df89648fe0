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
use rusqlite::{params, Connection, OptionalExtension};

use crate::conn::raw_error;

/// Highest `seq` SQLite's signed 64-bit integers hold.
const MAX_SEQ: u64 = i64::MAX as u64;

/// Append `batches` (each one publish) inside the caller's open write
/// transaction.
pub(crate) fn append(
    conn: &Connection,
    batches: &[&[Envelope]],
    dedupe_window_ms: i64,
) -> Result<Appended> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let all: Vec<&Envelope> = batches.iter().flat_map(|b| b.iter()).collect();
    let mut last_seq = topic_seqs(conn, &all)?;
    let mut seen = if dedupe_window_ms > 0 {
        existing_keys(conn, &all, now_ms - dedupe_window_ms)?
    } else {
        HashMap::new()
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (topic, seq, created_ms, appended_ms, idempotency_key, key, kind, priority, expires_ms, envelope)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .map_err(raw_error)?;
    let mut last_pos = None;
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
            insert
                .execute(params![
                    env.topic().as_str(),
                    seq as i64,
                    env.timestamp().timestamp_millis(),
                    now_ms,
                    &dedupe_key.1,
                    env.key(),
                    herald::backend::group::kind_code(env.kind()),
                    herald::backend::group::priority_code(env.priority()),
                    env.expires_at().map(|t| t.timestamp_millis()),
                    stored.to_json()?,
                ])
                .map_err(raw_error)?;
            last_pos = Some(conn.last_insert_rowid());
            if dedupe_window_ms > 0 {
                seen.insert(dedupe_key, seq);
            }
            seqs.push(seq);
        }
        out.push(seqs);
    }
    if last_pos.is_some() {
        let mut upsert = conn
            .prepare_cached(
                "INSERT INTO topics (name, last_seq) VALUES (?, ?)
                 ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
            )
            .map_err(raw_error)?;
        for (name, seq) in &last_seq {
            upsert
                .execute(params![name, *seq as i64])
                .map_err(raw_error)?;
        }
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

/// `last_seq` of every topic in `envs` that has one.
fn topic_seqs(conn: &Connection, envs: &[&Envelope]) -> Result<HashMap<String, u64>> {
    let mut names: Vec<&str> = envs.iter().map(|e| e.topic().as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut select = conn
        .prepare_cached("SELECT last_seq FROM topics WHERE name = ?")
        .map_err(raw_error)?;
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let seq: Option<i64> = select
            .query_row([name], |r| r.get(0))
            .optional()
            .map_err(raw_error)?;
        if let Some(seq) = seq {
            out.insert(name.to_owned(), seq as u64);
        }
    }
    Ok(out)
}

/// `(topic, idempotency_key) → seq` of the keys in `envs` appended since
/// `since_ms`; one indexed lookup per key.
fn existing_keys(
    conn: &Connection,
    envs: &[&Envelope],
    since_ms: i64,
) -> Result<HashMap<(String, String), u64>> {
    let mut select = conn.prepare_cached(EXISTING_KEY).map_err(raw_error)?;
    let mut out = HashMap::new();
    for e in envs {
        let key = (
            e.topic().as_str().to_owned(),
            e.idempotency_key().into_owned(),
        );
        if out.contains_key(&key) {
            continue;
        }
        let seq: Option<i64> = select
            .query_row(params![&key.0, &key.1, since_ms], |r| r.get(0))
            .map_err(raw_error)?;
        if let Some(seq) = seq {
            out.insert(key, seq as u64);
        }
    }
    Ok(out)
}

/// Store `letter` in the caller's open write transaction (its `id` is
/// assigned here; the one given is ignored).
pub(crate) fn insert_dead_letter(conn: &Connection, letter: &DeadLetter) -> Result<()> {
    let env = &letter.envelope;
    let stored = env.to_json()?;
    conn.prepare_cached(
        "INSERT INTO dead_letters (topic, seq, grp, code, reason, attempts, source, first_failed_ms, failed_ms, correlation_id, envelope)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .and_then(|mut q| {
        q.execute(params![
            env.topic().as_str(),
            env.seq().map(|s| s as i64),
            letter.group.as_deref(),
            letter.code.as_str(),
            &letter.reason,
            letter.attempts as i64,
            letter.source.as_str(),
            letter.first_failed_at.timestamp_millis(),
            letter.failed_at.timestamp_millis(),
            env.correlation_id().to_string(),
            stored,
        ])
    })
    .map_err(raw_error)?;
    Ok(())
}

/// The lowest `pos` a new group at `position` may want: per topic its
/// patterns match, the first event at or after its start, by the
/// `(topic, seq)` index (or `(topic, created_ms)` for a time start). Costs a
/// scan of the topic names and one index lookup per matching topic,
/// whatever the number of events.
pub(crate) fn first_wanted(
    conn: &Connection,
    spec: &SubscribeSpec,
    position: &Position,
) -> Result<Option<i64>> {
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM topics")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
        .map_err(raw_error)?;
    let mut first: Option<i64> = None;
    for name in names
        .iter()
        .filter(|t| spec.patterns.iter().any(|p| p.matches_str(t)))
    {
        let pos: Option<i64> = match position.start_ms {
            Some(ms) => conn
                .prepare_cached(FIRST_BY_TIME)
                .and_then(|mut q| q.query_row(params![name, ms], |r| r.get(0)))
                .map_err(raw_error)?,
            None => conn
                .prepare_cached(FIRST_BY_SEQ)
                .and_then(|mut q| {
                    q.query_row(params![name, position.start_seq.unwrap_or(1)], |r| r.get(0))
                        .optional()
                })
                .map_err(raw_error)?,
        };
        first = match (first, pos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// The first seq of a topic's idempotency key appended since a time. Named
/// index: left to itself, the planner walks the `(topic, seq)` index for
/// `min(seq)`, every event of the topic.
const EXISTING_KEY: &str = "SELECT min(seq) FROM events INDEXED BY events_by_idempotency_key
     WHERE topic = ? AND idempotency_key = ? AND appended_ms >= ?";
/// A topic's first event at or after a `seq` (`pos` grows with `seq`).
const FIRST_BY_SEQ: &str =
    "SELECT pos FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT 1";
/// A topic's first event (lowest `pos`) created at or after a time.
const FIRST_BY_TIME: &str = "SELECT min(pos) FROM events WHERE topic = ? AND created_ms >= ?";

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

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

    /// An in-memory database with the store's schema.
    async fn migrated() -> SqliteConnection {
        let conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        crate::schema::migrate(conn, ":memory:".into())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_dedupe_lookup_is_one_index_search() {
        let mut conn = migrated().await;
        let plan = plan_of(&mut conn, EXISTING_KEY).await;
        assert!(
            plan.contains("SEARCH events USING INDEX events_by_idempotency_key"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn positioning_a_group_is_an_index_lookup_per_topic() {
        let mut conn = migrated().await;
        for sql in [FIRST_BY_SEQ, FIRST_BY_TIME] {
            let plan = plan_of(&mut conn, sql).await;
            assert!(plan.contains("SEARCH events USING"), "{sql}:\n{plan}");
            assert!(plan.contains("INDEX"), "{sql}:\n{plan}");
            assert!(!plan.contains("SCAN events"), "{sql}:\n{plan}");
        }
    }
}

//! The event log as its writers and readers outside the sequencer see it.
//!
//! Owns appending a batch in a transaction of the store's own and waiting
//! for the sequencer's receipts (`PgStore::append`), and where a reader
//! starting at a position other than the latest begins in the log
//! (`start_cursor`, for a new group or a group-less tail). Inserting the
//! outbox rows is `outbox`'s, giving them `seq`s the `sequencer`'s,
//! following the log `tail`'s and `group`'s, replay and the topic list
//! `inspect`'s.

use std::sync::atomic::Ordering;

use herald::backend::group::Position;
use herald::{Envelope, Error, ErrorCode, Result, SubscribeSpec};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::conn::{closed, runtime_error, Inner};
use crate::outbox::insert_outbox;

/// Append `batch` in a transaction of its own and wait until the
/// sequencer has given each event its `seq` (a duplicate idempotency
/// key within the window gets the original's).
pub(crate) async fn append(inner: &Inner, batch: Vec<Envelope>) -> Result<Vec<u64>> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(closed());
    }
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = batch.iter().map(|e| e.id()).collect();
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    insert_outbox(inner, &mut tx, &batch).await?;
    tx.commit().await.map_err(runtime_error)?;
    wait_for_receipts(inner, &ids).await
}

/// Wait until the sequencer has written a receipt for each of `ids`;
/// their `seq`s in order.
async fn wait_for_receipts(inner: &Inner, ids: &[Uuid]) -> Result<Vec<u64>> {
    let deadline = tokio::time::Instant::now() + inner.config.timeout();
    let mut receipts = inner.receipts.subscribe();
    loop {
        receipts.borrow_and_update();
        // One primary-key probe per id, planned for each call: the planner
        // prices `envelope_id = ANY($1)`, or a join with the ids, as a scan
        // of the whole table (1-2 ms at 20,000 receipts against 0.13 ms of
        // probes; `receipts` holds twice a publish timeout's worth of
        // events), and a plan kept from when the table was young would scan
        // it once per id.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT r.envelope_id, r.seq FROM UNNEST($1::uuid[]) AS u(id)
             CROSS JOIN LATERAL (
                 SELECT envelope_id, seq FROM {}.receipts WHERE envelope_id = u.id LIMIT 1
             ) r",
            inner.s
        ))
        .persistent(false)
        .bind(ids)
        .fetch_all(&inner.pool)
        .await
        .map_err(runtime_error)?;
        let seqs: std::collections::HashMap<Uuid, i64> = rows.into_iter().collect();
        // An id may repeat in a batch (an envelope published twice): it has
        // one receipt.
        if let Some(all) = ids
            .iter()
            .map(|id| seqs.get(id).map(|s| *s as u64))
            .collect::<Option<Vec<u64>>>()
        {
            return Ok(all);
        }
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        tokio::select! {
            _ = receipts.changed() => {}
            _ = tokio::time::sleep(inner.config.poll()) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the events are committed but were not sequenced within {:?} \
                         (is a long transaction or a stopped sequencer holding them back?)",
                        inner.config.timeout()
                    ),
                ));
            }
        }
    }
}

/// Where a new group (or a group-less tail) starting at `start` (not
/// `Latest`) puts its cursor: just below the first event it may want — per topic its
/// patterns match, the first at or after its start, by the `(topic,
/// seq)` index (or `(topic, created_ms)` for a time start) — or after
/// the log's last event when no matching topic has one. Costs a read of
/// the topic names and one index lookup per matching topic, whatever
/// the number of events (DESIGN.md §10). The topics are read again in
/// the statement that finds the events, and the lookup is repeated if
/// one appeared in between, so a topic made meanwhile is not skipped.
pub(crate) async fn start_cursor(
    conn: &mut PgConnection,
    s: &str,
    spec: &SubscribeSpec,
    start: &Position,
) -> Result<i64> {
    let first = match start.start_ms {
        Some(_) => format!(
            "SELECT min(x.pos) FROM unnest($1::text[]) AS t(name) CROSS JOIN LATERAL
             (SELECT min(e.pos) AS pos FROM {s}.events e
              WHERE e.topic = t.name AND e.created_ms >= $2) x"
        ),
        None => format!(
            "SELECT min(x.pos) FROM unnest($1::text[]) AS t(name) CROSS JOIN LATERAL
             (SELECT e.pos FROM {s}.events e
              WHERE e.topic = t.name AND e.seq >= $2 ORDER BY e.seq LIMIT 1) x"
        ),
    };
    let lookup = format!(
        "SELECT (SELECT count(*) FROM {s}.topics), (SELECT coalesce(max(pos), 0) FROM {s}.events), ({first})"
    );
    loop {
        let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {s}.topics"))
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
        let matching: Vec<String> = names
            .iter()
            .filter(|t| spec.patterns.iter().any(|p| p.matches_str(t)))
            .cloned()
            .collect();
        let from = start.start_ms.or(start.start_seq).unwrap_or(1);
        let (topics, last, first): (i64, i64, Option<i64>) = sqlx::query_as(&lookup)
            .bind(&matching)
            .bind(from)
            .fetch_one(&mut *conn)
            .await
            .map_err(runtime_error)?;
        if topics as usize == names.len() {
            return Ok(first.map_or(last, |pos| pos - 1));
        }
    }
}

//! The dead-letter store: one table for every failure source.
//!
//! Owns writing and listing dead letters. Writes go through the writer task
//! (see `append`), so they share its transactions.

use futures_util::TryFutureExt;
use herald::dead_letter::DeadLetterRow;
use herald::{DeadLetter, DeadLetterFilter, Result};
use sqlx::SqliteConnection;

use crate::store::runtime_error;

/// Store `letter` (its `id` is assigned here; the one given is ignored).
pub(crate) async fn insert(conn: &mut SqliteConnection, letter: &DeadLetter) -> Result<()> {
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

/// The dead letters `filter` selects, oldest first, read 500 at a time.
pub(crate) async fn list(
    pool: sqlx::SqlitePool,
    filter: DeadLetterFilter,
) -> Result<Vec<DeadLetter>> {
    herald::dead_letter::select_pages(&filter, |after| {
        sqlx::query_as::<_, DeadLetterRow>(
            "SELECT id, grp, code, reason, attempts, source, first_failed_ms, failed_ms, envelope FROM dead_letters
             WHERE id > ? ORDER BY id LIMIT 500",
        )
        .bind(after)
        .fetch_all(&pool)
        .map_err(runtime_error)
    })
    .await
}

/// Delete the dead letters `filter` selects, in one write transaction.
pub(crate) async fn purge(store: &crate::SqliteStore, filter: DeadLetterFilter) -> Result<u64> {
    let ids: Vec<i64> = list(store.inner.readers.clone(), filter)
        .await?
        .iter()
        .map(|d| d.id as i64)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = store.begin().await?;
    for chunk in ids.chunks(500) {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM dead_letters WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *tx).await.map_err(runtime_error)?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}

//! The dead-letter table: one store for every failure source.
//!
//! Owns writing, listing and purging dead letters in PostgreSQL, and the
//! store's state as its delivery queues' `QueueHost` (the queues of
//! group-less subscriptions write their dead letters through it). Listing
//! and purging first wait for the writes the store's delivery queues have
//! under way (`herald::backend::dead_lettering`), so a dead letter is
//! visible to the process that made it. Groups and the sequencer insert
//! dead letters inside their own transactions (`insert`); the `Inspect`
//! impl that lists them is `transport`'s.

use futures_util::TryFutureExt;
use herald::backend::dead_lettering::{DeadLetterWrites, DEAD_LETTER_WRITE_WAIT};
use herald::backend::queue::QueueHost;
use herald::backend::{BoxFuture, DeadLetterRow};
use herald::{DeadLetter, DeadLetterFilter, Result};
use sqlx::PgConnection;

use crate::conn::{runtime_error, Inner};

/// Store `letter` (its `id` is assigned here; the one given is ignored).
pub(crate) async fn insert(s: &str, conn: &mut PgConnection, letter: &DeadLetter) -> Result<()> {
    let env = &letter.envelope;
    sqlx::query(&format!(
        "INSERT INTO {s}.dead_letters (topic, seq, grp, code, reason, attempts, source,
            first_failed_ms, failed_ms, correlation_id, envelope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(env.topic().as_str())
    .bind(env.seq().map(|s| s.min(i64::MAX as u64) as i64))
    .bind(letter.group.as_deref())
    .bind(letter.code.as_str())
    .bind(&letter.reason)
    .bind(i64::from(letter.attempts))
    .bind(letter.source.as_str())
    .bind(letter.first_failed_at.timestamp_millis())
    .bind(letter.failed_at.timestamp_millis())
    .bind(env.correlation_id())
    .bind(env.to_json()?)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// The dead letters `filter` selects, oldest first, read 500 at a time.
pub(crate) async fn list(inner: &Inner, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT id, grp, code, reason, attempts, source, first_failed_ms, failed_ms, envelope
         FROM {}.dead_letters WHERE id > $1 ORDER BY id LIMIT 500",
        inner.s
    );
    herald::backend::select_pages(filter, |after| {
        sqlx::query_as::<_, DeadLetterRow>(&sql)
            .bind(after)
            .fetch_all(&inner.pool)
            .map_err(runtime_error)
    })
    .await
}

/// Delete the dead letters `filter` selects; how many.
pub(crate) async fn purge(inner: &Inner, filter: &DeadLetterFilter) -> Result<u64> {
    let ids: Vec<i64> = list(inner, filter)
        .await?
        .iter()
        .map(|d| d.id as i64)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(&format!(
        "DELETE FROM {}.dead_letters WHERE id = ANY($1)",
        inner.s
    ))
    .bind(&ids)
    .execute(&inner.pool)
    .await
    .map_err(runtime_error)?;
    Ok(done.rows_affected())
}

/// Write `letter` on a connection of the pool: a delivery queue's dead
/// letter (`QueueHost::dead_letter`).
async fn write(pool: &sqlx::PgPool, s: &str, letter: &DeadLetter) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(runtime_error)?;
    insert(s, &mut conn, letter).await
}

/// Wait (up to `DEAD_LETTER_WRITE_WAIT`) for the dead letters being written.
pub(crate) async fn flush(inner: &Inner) {
    inner
        .dead_letter_writes
        .settled(DEAD_LETTER_WRITE_WAIT)
        .await;
}

impl QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        if self.discards.discard(&letter) {
            return Box::pin(std::future::ready(Ok(())));
        }
        let (pool, schema) = (self.pool.clone(), self.s.clone());
        Box::pin(async move { write(&pool, &schema, &letter).await })
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }
}

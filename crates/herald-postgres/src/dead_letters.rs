//! The dead-letter table: one store for every failure source.
//!
//! Owns writing, listing and purging dead letters in PostgreSQL. Dead
//! letters from delivery queues (which cannot wait) go through one writer
//! task in order; listing and purging first wait for it to catch up, so a
//! dead letter is visible to the process that made it.

use futures_util::TryFutureExt;
use herald::dead_letter::DeadLetterRow;
use herald::{DeadLetter, DeadLetterFilter, Result};
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use crate::store::{runtime_error, Inner};

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
    herald::dead_letter::select_pages(filter, |after| {
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

/// Work for the dead-letter writer.
pub(crate) enum Job {
    Store(Box<DeadLetter>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// Start the writer; its inbox lives in the store.
pub(crate) fn writer(pool: sqlx::PgPool, s: String) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            match job {
                Job::Store(letter) => {
                    let stored = async {
                        let mut conn = pool.acquire().await.map_err(runtime_error)?;
                        insert(&s, &mut conn, &letter).await
                    };
                    if let Err(e) = stored.await {
                        tracing::error!(topic = %letter.envelope.topic(), error = %e, "could not store a dead letter");
                    }
                }
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

/// Hand `letter` to the writer (from a queue, which cannot wait).
pub(crate) fn enqueue(inner: &Inner, letter: DeadLetter) {
    if inner.dead.send(Job::Store(Box::new(letter))).is_err() {
        tracing::error!("the store closed before a dead letter was written");
    }
}

/// Wait until every dead letter handed over so far is written.
pub(crate) async fn flush(inner: &Inner) {
    let (done, written) = oneshot::channel();
    if inner.dead.send(Job::Flush(done)).is_ok() {
        let _ = written.await;
    }
}

//! Retention: deleting old events by age and count, per topic.
//!
//! Owns the retention pass and its background task (running every
//! `retention_interval` when any retention is configured). Deletes go in
//! short write transactions, a bounded number of events at a time, so the
//! write lock is never held long. Readers need no care: tails and groups
//! move by `pos` and simply skip what is gone (see
//! [`Retention`](crate::Retention)).
//!
//! Does not own the public `SqliteStore::apply_retention` (`store`, which
//! delegates to [`apply`]) or starting the task (`store`'s open).

use std::sync::atomic::Ordering;
use std::sync::Weak;

use herald::Result;

use crate::conn::{runtime_error, Inner};

/// Most events deleted per transaction.
const CHUNK: i64 = 10_000;

/// Apply retention now; returns how many events were deleted.
pub(crate) async fn apply(inner: &Inner) -> Result<u64> {
    let topics: Vec<(String, i64)> = sqlx::query_as("SELECT name, last_seq FROM topics")
        .fetch_all(&inner.readers)
        .await
        .map_err(runtime_error)?;
    let now = chrono::Utc::now().timestamp_millis();
    let policy = inner.config.retention_policy();
    let mut deleted = 0;
    for (topic, last_seq) in topics {
        let name = topic.as_str();
        let cut = policy
            .cut(name, last_seq, now, |before| async move {
                let newest = sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT max(seq) FROM events WHERE topic = ? AND created_ms < ?",
                )
                .bind(name)
                .bind(before)
                .fetch_all(&inner.readers)
                .await
                .map_err(runtime_error)?
                .into_iter()
                .flatten()
                .next();
                Ok(newest.unwrap_or(0))
            })
            .await?;
        deleted += delete_through(inner, &topic, cut).await?;
    }
    if deleted > 0 {
        inner.pruned.fetch_add(1, Ordering::AcqRel);
    }
    Ok(deleted)
}

async fn delete_through(inner: &Inner, topic: &str, cut: i64) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let mut tx = inner.begin().await?;
        let done = sqlx::query(
            "DELETE FROM events WHERE topic = ? AND seq IN
             (SELECT seq FROM events WHERE topic = ? AND seq <= ? ORDER BY seq LIMIT ?)",
        )
        .bind(topic)
        .bind(topic)
        .bind(cut)
        .bind(CHUNK)
        .execute(&mut *tx)
        .await
        .map_err(runtime_error)?
        .rows_affected();
        tx.commit().await.map_err(runtime_error)?;
        deleted += done;
        if done < CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// Run retention every interval until the store is gone or closed.
pub(crate) async fn run(inner: Weak<Inner>) {
    let Some(policy) = inner.upgrade().map(|i| i.config.retention_policy().clone()) else {
        return;
    };
    herald::backend::retention::run_every(&policy, || {
        let inner = inner
            .upgrade()
            .filter(|i| !i.closed.load(Ordering::Acquire))?;
        Some(async move { apply(&inner).await })
    })
    .await;
}

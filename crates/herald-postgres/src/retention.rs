//! Retention: deleting old events by age and count, per topic, and what
//! keeps the hot tables small.
//!
//! Owns the retention pass (`apply`, behind `PgStore::apply_retention`) and
//! its background task (every `retention_interval` when any retention is
//! configured). Deletes go in short transactions of at most [`CHUNK`]
//! events, so no herald transaction holds back vacuum for long. Readers
//! need no care: tails and groups move by `pos` and skip what is gone. The
//! other tables stay small by construction: outbox rows live one sequencer
//! round, receipts are deleted by the sequencer, and a group's delivery
//! rows are deleted as its cursor passes them. The public method is
//! `store`'s.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use herald::Result;

use crate::conn::{runtime_error, Inner};

/// Most events deleted per transaction.
const CHUNK: i64 = 10_000;

/// Apply retention now; how many events were deleted.
pub(crate) async fn apply(inner: &Inner) -> Result<u64> {
    let s = &inner.s;
    let topics: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT name, last_seq FROM {s}.topics"))
            .fetch_all(&inner.pool)
            .await
            .map_err(runtime_error)?;
    let now = chrono::Utc::now().timestamp_millis();
    let policy = inner.config.retention_policy();
    let newest_sql = &format!(
        "SELECT coalesce(max(seq), 0) FROM {s}.events WHERE topic = $1 AND created_ms < $2"
    );
    let mut deleted = 0;
    for (topic, last_seq) in topics {
        let name = topic.as_str();
        let cut = policy
            .cut(name, last_seq, now, |before| async move {
                sqlx::query_scalar::<_, i64>(newest_sql)
                    .bind(name)
                    .bind(before)
                    .fetch_one(&inner.pool)
                    .await
                    .map_err(runtime_error)
            })
            .await?;
        deleted += delete_through(inner, name, cut).await?;
    }
    if deleted > 0 {
        inner
            .pruned
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    Ok(deleted)
}

/// Delete `topic`'s events up to `seq` `cut`, a chunk per transaction.
async fn delete_through(inner: &Inner, topic: &str, cut: i64) -> Result<u64> {
    let sql = format!(
        "DELETE FROM {s}.events WHERE pos IN
         (SELECT pos FROM {s}.events WHERE topic = $1 AND seq <= $2 ORDER BY seq LIMIT $3)",
        s = inner.s
    );
    let mut deleted = 0;
    loop {
        let done = sqlx::query(&sql)
            .bind(topic)
            .bind(cut)
            .bind(CHUNK)
            .execute(&inner.pool)
            .await
            .map_err(runtime_error)?
            .rows_affected();
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

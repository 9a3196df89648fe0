//! Retention: deleting old events by age and count, per topic.
//!
//! Owns the retention pass and its background task (running every
//! `retention_interval` when any retention is configured). Deletes go in
//! short write transactions, a bounded number of events at a time, so the
//! write lock is never held long. Readers need no care: tails and groups
//! move by `pos` and simply skip what is gone (see [`Retention`]).

use std::sync::atomic::Ordering;
use std::sync::Weak;

use herald::Result;

use crate::config::Retention;
use crate::store::{runtime_error, Inner, SqliteStore};

/// Most events deleted per transaction.
const CHUNK: i64 = 10_000;

impl SqliteStore {
    /// Apply retention now; returns how many events were deleted.
    pub async fn apply_retention(&self) -> Result<u64> {
        let topics: Vec<(String, i64)> = sqlx::query_as("SELECT name, last_seq FROM topics")
            .fetch_all(&self.inner.readers)
            .await
            .map_err(runtime_error)?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut deleted = 0;
        for (topic, last_seq) in topics {
            let r = self.inner.config.retention_of(&topic);
            let cut = self.cut(&topic, last_seq, r, now).await?;
            deleted += self.delete_through(&topic, cut).await?;
        }
        Ok(deleted)
    }

    /// The highest seq of `topic` that retention `r` deletes (0: none).
    async fn cut(&self, topic: &str, last_seq: i64, r: Retention, now: i64) -> Result<i64> {
        let by_count = r
            .events()
            .map_or(0, |n| (last_seq - n.min(i64::MAX as u64) as i64).max(0));
        let by_age = match r.age() {
            None => 0,
            Some(age) => {
                let before = now.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
                sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT max(seq) FROM events WHERE topic = ? AND created_ms < ?",
                )
                .bind(topic)
                .bind(before)
                .fetch_all(&self.inner.readers)
                .await
                .map_err(runtime_error)?
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(0)
            }
        };
        Ok(by_count.max(by_age))
    }

    async fn delete_through(&self, topic: &str, cut: i64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let mut tx = self.begin().await?;
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
            tx.commit().await?;
            deleted += done;
            if done < CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// Run retention every interval until the store is gone or closed.
pub(crate) async fn run(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) if !i.config.retains_everything() => i.config.retention_every(),
        _ => return,
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let store = SqliteStore { inner };
        match store.apply_retention().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention deleted old events"),
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying at the next interval"),
        }
    }
}

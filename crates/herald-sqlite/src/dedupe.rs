//! Consumer-side dedupe kept in the store: which messages each handler
//! group has processed, surviving restarts.
//!
//! Owns [`SqliteDedupe`], herald's [`DedupeStore`] on the `processed` table.
//! Ids are written through the writer task (group commit, like every other
//! write) and read through the reader pool. Each write also deletes up to
//! [`PURGE_BATCH`] expired rows, so the table holds about one window's worth
//! of ids without a separate cleanup job.

use std::sync::Arc;
use std::time::Duration;

use herald::dedupe::DedupeStore;
use herald::delivery::BoxFuture;
use herald::Result;
use sqlx::SqliteConnection;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{runtime_error, Inner, SqliteStore};
use crate::writer::Request;

/// Expired ids deleted with each new one.
pub const PURGE_BATCH: i64 = 100;

/// Processed message ids in the store, per group, for a window.
///
/// ```
/// use std::time::Duration;
/// use herald::dedupe::Dedupe;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = herald_sqlite::SqliteStore::open(
///     herald_sqlite::SqliteConfig::new(dir.path().join("events.db")),
/// ).await?;
/// let bus = herald::Bus::new(store.clone());
/// let handler = bus
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(store.dedupe(Duration::from_secs(24 * 3600))?));
/// # drop(handler);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteDedupe {
    inner: Arc<Inner>,
    window_ms: i64,
}

/// One id to remember, for the writer.
pub(crate) struct Processed {
    group: String,
    id: Uuid,
    until_ms: i64,
}

impl SqliteStore {
    /// A dedupe store in this store remembering ids for `window`
    /// (1 ms – 7 days, as `HERALD_DEDUPE_WINDOW`).
    pub fn dedupe(&self, window: Duration) -> Result<SqliteDedupe> {
        herald::config::in_range(
            "HERALD_DEDUPE_WINDOW",
            window.as_secs_f64(),
            0.001,
            7.0 * 86_400.0,
        )?;
        Ok(SqliteDedupe {
            inner: self.inner.clone(),
            window_ms: window.as_millis().min(i64::MAX as u128) as i64,
        })
    }
}

impl DedupeStore for SqliteDedupe {
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let now = chrono::Utc::now().timestamp_millis();
            let rows: Vec<i64> = sqlx::query_scalar(
                "SELECT 1 FROM processed WHERE grp = ? AND id = ? AND until_ms > ?",
            )
            .bind(group)
            .bind(id.to_string())
            .bind(now)
            .fetch_all(&self.inner.readers)
            .await
            .map_err(runtime_error)?;
            Ok(!rows.is_empty())
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let until_ms = chrono::Utc::now()
                .timestamp_millis()
                .saturating_add(self.window_ms);
            let processed = Processed {
                group: group.to_owned(),
                id,
                until_ms,
            };
            let (reply, done) = oneshot::channel();
            self.inner
                .writer
                .send(Request::Processed(Box::new(processed), reply))
                .await
                .map_err(|_| crate::append::closed())?;
            done.await.map_err(|_| crate::append::closed())?
        })
    }
}

/// Remember `p` and forget a batch of expired ids (inside the writer's
/// transaction).
pub(crate) async fn record(conn: &mut SqliteConnection, p: &Processed) -> Result<()> {
    sqlx::query(
        "INSERT INTO processed (grp, id, until_ms) VALUES (?, ?, ?)
         ON CONFLICT (grp, id) DO UPDATE SET until_ms = excluded.until_ms",
    )
    .bind(&p.group)
    .bind(p.id.to_string())
    .bind(p.until_ms)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    sqlx::query(
        "DELETE FROM processed WHERE (grp, id) IN
         (SELECT grp, id FROM processed WHERE until_ms <= ? LIMIT ?)",
    )
    .bind(chrono::Utc::now().timestamp_millis())
    .bind(PURGE_BATCH)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

impl std::fmt::Debug for SqliteDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDedupe")
            .field("path", &self.inner.path)
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

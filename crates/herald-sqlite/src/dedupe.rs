//! Consumer-side dedupe kept in the store: which messages each handler
//! group has processed, surviving restarts.
//!
//! Owns [`SqliteDedupe`], herald's [`DedupeStore`] on the `processed` table.
//! Ids are written through the writer task (group commit, like every other
//! write) and read through the reader pool. Each write also deletes up to
//! [`PURGE_BATCH`] expired rows, so the table holds about one window's worth
//! of ids without a separate cleanup job. Does not own the public
//! `SqliteStore::dedupe` that makes one (`store`) or the writer-side SQL
//! (`processed`).

use std::sync::Arc;
use std::time::Duration;

use herald::backend::BoxFuture;
use herald::backend::DedupeStore;
use herald::Result;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::conn::{closed, runtime_error, Inner};
pub use crate::processed::PURGE_BATCH;
use crate::request::{Processed, Request};

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

impl SqliteDedupe {
    /// A dedupe store in the store of `inner` remembering ids for `window`
    /// (1 ms – 7 days, as `HERALD_DEDUPE_WINDOW`).
    pub(crate) fn new(inner: Arc<Inner>, window: Duration) -> Result<SqliteDedupe> {
        Ok(SqliteDedupe {
            inner,
            window_ms: herald::backend::dedupe::window_ms(window)?,
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
                .map_err(|_| closed())?;
            done.await.map_err(|_| closed())?
        })
    }
}

impl std::fmt::Debug for SqliteDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDedupe")
            .field("path", &self.inner.path)
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

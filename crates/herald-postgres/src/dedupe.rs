//! Consumer-side dedupe kept in the store: which messages each handler
//! group has processed, surviving restarts (the `processed` table).
//!
//! Owns [`PgDedupe`], herald's [`DedupeStore`] on PostgreSQL. A record is
//! one upsert that also deletes up to [`PURGE_BATCH`] expired ids, so the
//! table holds about one window's worth without a cleanup job. Does not own
//! the table (`schema`, v4) or when a layer asks (`herald::dedupe`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald::backend::{BoxFuture, DedupeStore};
use herald::Result;
use uuid::Uuid;

use crate::conn::{closed, runtime_error, Inner};

/// Expired ids deleted with each new one.
pub const PURGE_BATCH: i64 = 100;

/// Processed message ids in the store, per group, for a window.
///
/// ```no_run
/// use std::time::Duration;
/// use herald::dedupe::Dedupe;
/// # async fn doc(store: herald_postgres::PgStore) -> herald::Result<()> {
/// let bus = herald::Bus::new(store.clone());
/// let handler = bus
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(store.dedupe(Duration::from_secs(24 * 3600))?));
/// # drop(handler);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgDedupe {
    inner: Arc<Inner>,
    window_ms: i64,
}

impl PgDedupe {
    /// A dedupe store in the schema of `inner` remembering ids for
    /// `window` (1 ms – 7 days, as `HERALD_DEDUPE_WINDOW`).
    pub(crate) fn new(inner: Arc<Inner>, window: Duration) -> Result<PgDedupe> {
        Ok(PgDedupe {
            inner,
            window_ms: herald::backend::dedupe::window_ms(window)?,
        })
    }
}

impl PgDedupe {
    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(())
    }
}

impl DedupeStore for PgDedupe {
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_open()?;
            let s = &self.inner.s;
            let now = chrono::Utc::now().timestamp_millis();
            let found: Option<i32> = sqlx::query_scalar(&format!(
                "SELECT 1 FROM {s}.processed WHERE grp = $1 AND id = $2 AND until_ms > $3"
            ))
            .bind(group)
            .bind(id)
            .bind(now)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(runtime_error)?;
            Ok(found.is_some())
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check_open()?;
            let s = &self.inner.s;
            let now = chrono::Utc::now().timestamp_millis();
            sqlx::query(&format!(
                "WITH purged AS (
                     DELETE FROM {s}.processed WHERE (grp, id) IN
                     (SELECT grp, id FROM {s}.processed WHERE until_ms <= $4 LIMIT $5)
                 )
                 INSERT INTO {s}.processed (grp, id, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (grp, id) DO UPDATE SET until_ms = excluded.until_ms"
            ))
            .bind(group)
            .bind(id)
            .bind(now.saturating_add(self.window_ms))
            .bind(now)
            .bind(PURGE_BATCH)
            .execute(&self.inner.pool)
            .await
            .map_err(runtime_error)?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for PgDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDedupe")
            .field("schema", &self.inner.config.schema_name())
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

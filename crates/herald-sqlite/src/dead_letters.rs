//! The dead-letter store: one table for every failure source.
//!
//! Owns the store's side as the queues' `QueueHost` (the dead letters of
//! group-less subscriptions become requests to the writer, which writes them
//! in its transactions) and listing and purging dead letters. Does not own
//! the row insert the writer and group settlements run (`log`), or the
//! `Inspect` impl that calls these (`transport`).

use futures_util::TryFutureExt;
use herald::backend::dead_lettering::DeadLetterWrites;
use herald::backend::queue::QueueHost;
use herald::backend::{BoxFuture, DeadLetterRow};
use herald::{DeadLetter, DeadLetterFilter, Result};
use tokio::sync::oneshot;

use crate::conn::{closed, runtime_error, Inner};
use crate::request::Request;

impl QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        if self.discards.discard(&letter) {
            return Box::pin(std::future::ready(Ok(())));
        }
        let writer = self.writer.clone();
        Box::pin(async move {
            let (reply, done) = oneshot::channel();
            writer
                .send(Request::DeadLetter(Box::new(letter), reply))
                .await
                .map_err(|_| closed())?;
            done.await.map_err(|_| closed())?
        })
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }
}

/// The dead letters `filter` selects, oldest first, read 500 at a time.
pub(crate) async fn list(
    pool: sqlx::SqlitePool,
    filter: DeadLetterFilter,
) -> Result<Vec<DeadLetter>> {
    herald::backend::select_pages(&filter, |after| {
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
pub(crate) async fn purge(inner: &Inner, filter: DeadLetterFilter) -> Result<u64> {
    let ids: Vec<i64> = list(inner.readers.clone(), filter)
        .await?
        .iter()
        .map(|d| d.id as i64)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = inner.begin().await?;
    for chunk in ids.chunks(500) {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM dead_letters WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *tx).await.map_err(runtime_error)?;
    }
    tx.commit().await.map_err(runtime_error)?;
    Ok(ids.len() as u64)
}

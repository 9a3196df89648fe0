//! The `processed` table: the message ids each handler group processed,
//! each until its dedupe window ends. The writer runs [`record`] in its
//! transactions; `dedupe.rs` is the `DedupeStore` on top. Does not own the
//! request's type (`request::Processed`) or reading the table (`dedupe`).

use herald::Result;
use sqlx::SqliteConnection;

use crate::conn::runtime_error;
use crate::request::Processed;

/// Expired ids deleted with each new one.
pub const PURGE_BATCH: i64 = 100;

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

//! The `processed` table: the message ids each handler group processed,
//! each until its dedupe window ends. The writer runs [`record`] in its
//! transactions; `dedupe.rs` is the `DedupeStore` on top. Does not own the
//! request's type (`request::Processed`) or reading the table (`dedupe`).

use herald::Result;
use rusqlite::{params, Connection};

use crate::conn::raw_error;
use crate::request::Processed;

/// Expired ids deleted with each new one.
pub const PURGE_BATCH: i64 = 100;

/// Remember `p` and forget a batch of expired ids (inside the writer's
/// transaction).
pub(crate) fn record(conn: &Connection, p: &Processed) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO processed (grp, id, until_ms) VALUES (?, ?, ?)
         ON CONFLICT (grp, id) DO UPDATE SET until_ms = excluded.until_ms",
    )
    .and_then(|mut q| q.execute(params![&p.group, p.id.to_string(), p.until_ms]))
    .map_err(raw_error)?;
    conn.prepare_cached(
        "DELETE FROM processed WHERE (grp, id) IN
         (SELECT grp, id FROM processed WHERE until_ms <= ? LIMIT ?)",
    )
    .and_then(|mut q| q.execute(params![chrono::Utc::now().timestamp_millis(), PURGE_BATCH]))
    .map_err(raw_error)?;
    Ok(())
}

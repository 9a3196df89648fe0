//! The store's SQL schema and its migrations.
//!
//! Owns the versioned migrations, applied in order on open inside one
//! transaction, and the refusal to open a store written by a newer version.
//! Every later change to the schema is a new entry in [`MIGRATIONS`]; an
//! entry, once released, never changes.

use herald::{Error, ErrorCode, Result};
use sqlx::{Connection, SqliteConnection};

/// The migrations; entry `i` takes the store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: the event log.
    r#"
    CREATE TABLE topics (
        name      TEXT PRIMARY KEY,
        last_seq  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE events (
        pos             INTEGER PRIMARY KEY AUTOINCREMENT,
        topic           TEXT NOT NULL,
        seq             INTEGER NOT NULL,
        created_ms      INTEGER NOT NULL,
        appended_ms     INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        envelope        BLOB NOT NULL,
        UNIQUE (topic, seq)
    );
    CREATE INDEX events_by_idempotency_key ON events (topic, idempotency_key);
    CREATE INDEX events_by_time ON events (topic, created_ms);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the store at `path` to [`SCHEMA_VERSION`].
pub(crate) async fn migrate(conn: &mut SqliteConnection, path: &str) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS herald_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| crate::store::open_error(path, e))?;
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| crate::store::open_error(path, e))?;
    let version: i64 =
        sqlx::query_scalar("SELECT value FROM herald_meta WHERE key = 'schema_version'")
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| crate::store::open_error(path, e))?
            .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorCode::Validation,
            format!(
                "the store at {path} has schema version {version}, written by a newer herald; \
                 this build reads versions up to {SCHEMA_VERSION}"
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| crate::store::open_error(path, e))?;
        tracing::info!(path, version = i + 1, "applied store migration");
    }
    sqlx::query("INSERT INTO herald_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::store::open_error(path, e))?;
    tx.commit()
        .await
        .map_err(|e| crate::store::open_error(path, e))?;
    Ok(())
}

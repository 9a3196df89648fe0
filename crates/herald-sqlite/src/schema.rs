//! The store's SQL schema and its migrations.
//!
//! Owns the versioned migrations, applied in order on open inside one
//! transaction, and the refusal to open a store written by a newer version.
//! Every later change to the schema is a new entry in [`MIGRATIONS`]; an
//! entry, once released, never changes. Does not own opening the
//! connection (`store`, with `conn`'s connect options).

use herald::{Error, ErrorCode, Result};
use sqlx::SqliteConnection;

use crate::conn::open_error;

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
        key             TEXT,
        kind            INTEGER NOT NULL,
        priority        INTEGER NOT NULL,
        expires_ms      INTEGER,
        envelope        BLOB NOT NULL,
        UNIQUE (topic, seq)
    );
    CREATE INDEX events_by_idempotency_key ON events (topic, idempotency_key);
    CREATE INDEX events_by_time ON events (topic, created_ms);

    CREATE TABLE dead_letters (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        topic           TEXT NOT NULL,
        seq             INTEGER,
        grp             TEXT,
        code            TEXT NOT NULL,
        reason          TEXT NOT NULL,
        attempts        INTEGER NOT NULL,
        source          TEXT NOT NULL,
        first_failed_ms INTEGER NOT NULL,
        failed_ms       INTEGER NOT NULL,
        correlation_id  TEXT NOT NULL,
        envelope        BLOB NOT NULL
    );
    CREATE INDEX dead_letters_by_topic ON dead_letters (topic, failed_ms);

    CREATE TABLE groups (
        name        TEXT PRIMARY KEY,
        patterns    TEXT NOT NULL,
        kinds       INTEGER NOT NULL,
        cursor      INTEGER NOT NULL,
        start_seq   INTEGER,
        start_ms    INTEGER
    ) WITHOUT ROWID;

    CREATE TABLE deliveries (
        grp             TEXT NOT NULL,
        pos             INTEGER NOT NULL,
        state           INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        lease_until_ms  INTEGER NOT NULL,
        owner           TEXT,
        first_failed_ms INTEGER,
        PRIMARY KEY (grp, pos)
    ) WITHOUT ROWID;
    "#,
    // v2: message ids processed by handler groups (consumer-side dedupe).
    r#"
    CREATE TABLE processed (
        grp       TEXT NOT NULL,
        id        TEXT NOT NULL,
        until_ms  INTEGER NOT NULL,
        PRIMARY KEY (grp, id)
    ) WITHOUT ROWID;
    CREATE INDEX processed_by_expiry ON processed (until_ms);
    "#,
    // v3: the members of each group seen claiming lately (a claim's fair
    // share divides by their count).
    r#"
    CREATE TABLE members (
        grp      TEXT NOT NULL,
        id       TEXT NOT NULL,
        seen_ms  INTEGER NOT NULL,
        PRIMARY KEY (grp, id)
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the store at `path` to [`SCHEMA_VERSION`]; hands the connection back.
pub(crate) async fn migrate(mut conn: SqliteConnection, path: String) -> Result<SqliteConnection> {
    migrate_on(&mut conn, &path).await?;
    Ok(conn)
}

async fn migrate_on(conn: &mut SqliteConnection, path: &str) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS herald_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| open_error(path, e))?;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(|e| open_error(path, e))?;
    let result = apply(conn, path).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::query(end)
        .execute(&mut *conn)
        .await
        .map_err(|e| open_error(path, e))?;
    result
}

/// Apply the missing migrations, inside the caller's transaction.
async fn apply(conn: &mut SqliteConnection, path: &str) -> Result<()> {
    let version: i64 =
        sqlx::query_scalar("SELECT value FROM herald_meta WHERE key = 'schema_version'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| open_error(path, e))?
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
        // One statement at a time (migrations hold no `;` inside statements):
        // sqlx's multi-statement `raw_sql` future is not provably `Send`.
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .map_err(|e| open_error(path, e))?;
        }
        tracing::info!(path, version = i + 1, "applied store migration");
    }
    sqlx::query("INSERT INTO herald_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(SCHEMA_VERSION)
        .execute(&mut *conn)
        .await
        .map_err(|e| open_error(path, e))?;
    Ok(())
}

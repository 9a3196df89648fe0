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
    // v4: contracts, the schema subjects and their versions.
    r#"
    CREATE TABLE schema_subjects (
        pattern        TEXT PRIMARY KEY,
        owner          TEXT,
        description    TEXT,
        compatibility  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE schema_versions (
        pattern        TEXT NOT NULL,
        version        INTEGER NOT NULL,
        schema         TEXT NOT NULL,
        registered_ms  INTEGER NOT NULL,
        PRIMARY KEY (pattern, version)
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

/// The index [`unique_keys`] keeps while keys are kept forever.
pub(crate) const UNIQUE_KEYS_INDEX: &str = "events_unique_idempotency_key";

/// With `HERALD_DEDUPE_WINDOW=forever` (`forever`), make each topic's
/// idempotency keys unique in the log; refused with `VALIDATION` when the
/// log already repeats a key (appended more than a window apart). Without
/// it, drop that index, so a key may be appended again after its window.
pub(crate) async fn unique_keys(
    conn: &mut SqliteConnection,
    path: &str,
    forever: bool,
) -> Result<()> {
    let sql = if forever {
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {UNIQUE_KEYS_INDEX} ON events (topic, idempotency_key)"
        )
    } else {
        format!("DROP INDEX IF EXISTS {UNIQUE_KEYS_INDEX}")
    };
    sqlx::query(&sql).execute(&mut *conn).await.map_err(|e| {
        if e.as_database_error()
            .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
        {
            return Error::new(
                ErrorCode::Validation,
                format!(
                    "HERALD_DEDUPE_WINDOW=forever: the store at {path} already logs one topic's \
                     idempotency key more than once (appended more than a dedupe window apart), \
                     so the keys cannot be made unique; keep a window, or start a fresh store"
                ),
            );
        }
        open_error(path, e)
    })?;
    Ok(())
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

#[cfg(test)]
mod tests {
    //! Upgrades (issue 22 item 10): a store written by the previous schema
    //! version, with events, group positions and dead letters in it, opens
    //! with this build and keeps all of them.

    use herald::Bus;
    use rusqlite::Connection;

    use super::*;
    use crate::{SqliteConfig, SqliteStore};

    /// What undoes the last migration: applied to a store this build wrote,
    /// it gives the previous version's layout (checked against a store made
    /// by the previous migrations alone). A new migration replaces it.
    const UNDO_LAST: (i64, &str) = (4, "DROP TABLE schema_versions; DROP TABLE schema_subjects");

    /// The tables and indexes of the store at `path`, as SQLite keeps their SQL.
    fn layout(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut q = conn
            .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// A store at `path` made by the first `version` migrations alone.
    fn made_at(path: &std::path::Path, version: usize) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS herald_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        )
        .unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute(
            "INSERT INTO herald_meta (key, value) VALUES ('schema_version', ?1)",
            [version as i64],
        )
        .unwrap();
    }

    async fn open(path: &std::path::Path) -> (SqliteStore, Bus) {
        let store = SqliteStore::open(SqliteConfig::new(path)).await.unwrap();
        (store.clone(), Bus::new(store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_of_the_previous_version_keeps_its_events_offsets_and_dead_letters() {
        assert_eq!(
            UNDO_LAST.0, SCHEMA_VERSION,
            "a new migration needs its undo here"
        );
        let dir = tempfile::tempdir().unwrap();
        let (path, reference) = (dir.path().join("old.db"), dir.path().join("ref.db"));
        let (store, bus) = open(&path).await;
        let history = herald_conformance::kept::write(&bus).await;
        // The bus's close waits for its group member to hand back what it
        // claimed past the history (a store closed under it would leave
        // those leases to run out after the ack wait).
        bus.close().await.unwrap();
        store.close().await;

        // The previous version's store: this build's data, the last
        // migration undone, and the layout checked against that version's.
        let previous = MIGRATIONS.len() - 1;
        let old = Connection::open(&path).unwrap();
        old.execute_batch(UNDO_LAST.1).unwrap();
        old.execute(
            "UPDATE herald_meta SET value = ?1 WHERE key = 'schema_version'",
            [previous as i64],
        )
        .unwrap();
        made_at(&reference, previous);
        assert_eq!(layout(&old), layout(&Connection::open(&reference).unwrap()));
        drop(old);

        let (store, bus) = open(&path).await;
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT value FROM herald_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        history.check(&bus).await;
        store.close().await;
    }
}

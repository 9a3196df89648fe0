//! The store's SQL schema and its migrations, in its own PostgreSQL schema.
//!
//! Owns the versioned migrations, applied in order on open, each in its own
//! transaction, while an advisory lock keeps two processes from migrating
//! at once; and the refusal to open a schema written by a newer version.
//! Every change is a new entry in [`MIGRATIONS`]; a released entry never
//! changes. `{s}` in an entry stands for the quoted schema name, `{n}` for
//! the bare one. Connecting is `conn`'s; `store` migrates on open.

use herald::{Error, ErrorCode, Result};
use sqlx::PgConnection;

use crate::conn::runtime_error;

/// The migrations; entry `i` takes the schema from version `i` to `i + 1`,
/// one statement per string.
const MIGRATIONS: &[&[&str]] = &[
    // v1: the outbox, the event log, receipts, dead letters, and the wake-up
    // of an idle sequencer.
    &[
        "CREATE TABLE {s}.topics (
            name      text PRIMARY KEY,
            last_seq  bigint NOT NULL
        )",
        "CREATE TABLE {s}.outbox (
            id               bigserial PRIMARY KEY,
            txid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
            envelope_id      uuid NOT NULL,
            topic            text NOT NULL,
            idempotency_key  text NOT NULL,
            envelope         bytea NOT NULL
        )",
        "CREATE TABLE {s}.events (
            pos              bigint PRIMARY KEY,
            topic            text NOT NULL,
            seq              bigint NOT NULL,
            id               uuid NOT NULL,
            created_ms       bigint NOT NULL,
            appended_ms      bigint NOT NULL,
            idempotency_key  text NOT NULL,
            envelope         bytea NOT NULL,
            UNIQUE (topic, seq)
        )",
        "CREATE INDEX events_by_idempotency_key ON {s}.events (topic, idempotency_key)",
        "CREATE INDEX events_by_time ON {s}.events (topic, created_ms)",
        // Subscriptions to named topics read by (topic, pos): a rare topic
        // is not found by scanning everything after it.
        "CREATE INDEX events_by_topic_pos ON {s}.events (topic, pos)",
        "CREATE TABLE {s}.receipts (
            envelope_id  uuid PRIMARY KEY,
            topic        text NOT NULL,
            seq          bigint NOT NULL,
            at_ms        bigint NOT NULL
        )",
        "CREATE INDEX receipts_by_age ON {s}.receipts (at_ms)",
        "CREATE TABLE {s}.dead_letters (
            id               bigserial PRIMARY KEY,
            topic            text NOT NULL,
            seq              bigint,
            grp              text,
            code             text NOT NULL,
            reason           text NOT NULL,
            attempts         bigint NOT NULL,
            source           text NOT NULL,
            first_failed_ms  bigint NOT NULL,
            failed_ms        bigint NOT NULL,
            correlation_id   uuid NOT NULL,
            envelope         bytea NOT NULL
        )",
        "CREATE INDEX dead_letters_by_topic ON {s}.dead_letters (topic, failed_ms)",
        "INSERT INTO {s}.herald_meta (key, value) VALUES ('next_pos', 1), ('sequencer_idle', 1)",
        // At commit (a deferred trigger), once per transaction: wake the
        // sequencer if it is idle. A busy sequencer needs no wake-up, and
        // NOTIFY serializes the commits of the transactions that send it.
        "CREATE FUNCTION {s}.wake_sequencer() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF current_setting('herald.woke_{n}', true) IS DISTINCT FROM 'y' THEN
                 PERFORM set_config('herald.woke_{n}', 'y', true);
                 IF (SELECT value FROM {s}.herald_meta WHERE key = 'sequencer_idle') = 1 THEN
                     PERFORM pg_notify('herald_outbox_{n}', '');
                 END IF;
             END IF;
             RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER wake_sequencer AFTER INSERT ON {s}.outbox
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.wake_sequencer()",
    ],
    // v2: durable consumer groups. Events carry what a claim decides on
    // without decoding envelopes; a group is a cursor plus one delivery row
    // per event a member touched above it (see `herald::backend::group`).
    &[
        "ALTER TABLE {s}.events ADD COLUMN key text,
            ADD COLUMN kind bigint NOT NULL DEFAULT 0,
            ADD COLUMN priority bigint NOT NULL DEFAULT 1,
            ADD COLUMN expires_ms bigint",
        "CREATE TABLE {s}.groups (
            name       text PRIMARY KEY,
            patterns   text NOT NULL,
            kinds      bigint NOT NULL,
            cursor     bigint NOT NULL,
            start_seq  bigint,
            start_ms   bigint
        )",
        "CREATE TABLE {s}.deliveries (
            grp              text NOT NULL,
            pos              bigint NOT NULL,
            state            bigint NOT NULL,
            attempt          bigint NOT NULL,
            lease_until_ms   bigint NOT NULL,
            owner            text,
            first_failed_ms  bigint,
            PRIMARY KEY (grp, pos)
        )",
        "CREATE INDEX dead_letters_by_group ON {s}.dead_letters (grp, topic, seq)",
    ],
    // v3: the members of each group seen claiming lately (a claim's fair
    // share divides by their count).
    &["CREATE TABLE {s}.members (
            grp      text NOT NULL,
            id       text NOT NULL,
            seen_ms  bigint NOT NULL,
            PRIMARY KEY (grp, id)
        )"],
    // v4: message ids processed by handler groups (consumer-side dedupe,
    // `processed`), each until its window ends.
    &[
        "CREATE TABLE {s}.processed (
            grp       text NOT NULL,
            id        uuid NOT NULL,
            until_ms  bigint NOT NULL,
            PRIMARY KEY (grp, id)
        )",
        "CREATE INDEX processed_by_expiry ON {s}.processed (until_ms)",
    ],
    // v5: contracts, the schema subjects and their versions (`contracts`).
    &[
        "CREATE TABLE {s}.schema_subjects (
            pattern        text PRIMARY KEY,
            owner          text,
            description    text,
            compatibility  text NOT NULL
        )",
        "CREATE TABLE {s}.schema_versions (
            pattern        text NOT NULL,
            version        bigint NOT NULL,
            schema         jsonb NOT NULL,
            registered_ms  bigint NOT NULL,
            PRIMARY KEY (pattern, version)
        )",
    ],
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `"name"`: an identifier already checked by the config, quoted anyway.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// Bring `schema` to [`SCHEMA_VERSION`].
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str, forever: bool) -> Result<()> {
    let lock_key = format!("herald.migrate.{schema}");
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let mut result = apply(conn, schema).await;
    if result.is_ok() {
        result = unique_keys(conn, schema, forever).await;
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *conn)
        .await;
    result
}

/// The index [`unique_keys`] keeps while keys are kept forever.
pub(crate) const UNIQUE_KEYS_INDEX: &str = "events_unique_idempotency_key";

/// With `HERALD_DEDUPE_WINDOW=forever` (`forever`), make each topic's
/// idempotency keys unique in the log, the constraint that holds whatever
/// the sequencer does; refused with `VALIDATION` when the log already
/// repeats a key (appended more than a window apart). Without it, drop
/// that index, so a key may be appended again after its window.
async fn unique_keys(conn: &mut PgConnection, schema: &str, forever: bool) -> Result<()> {
    let s = quoted(schema);
    let sql = if forever {
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {UNIQUE_KEYS_INDEX} ON {s}.events (topic, idempotency_key)"
        )
    } else {
        format!("DROP INDEX IF EXISTS {s}.{UNIQUE_KEYS_INDEX}")
    };
    sqlx::query(&sql).execute(&mut *conn).await.map_err(|e| {
        match e.as_database_error().and_then(|d| d.code()) {
            Some(code) if code == "23505" => Error::new(
                ErrorCode::Validation,
                format!(
                    "HERALD_DEDUPE_WINDOW=forever: schema {schema} already logs one topic's \
                     idempotency key more than once (appended more than a dedupe window \
                     apart), so the keys cannot be made unique; keep a window, or start on a \
                     fresh schema"
                ),
            ),
            _ => runtime_error(e),
        }
    })?;
    Ok(())
}

async fn apply(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let s = quoted(schema);
    for statement in [
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!("CREATE TABLE IF NOT EXISTS {s}.herald_meta (key text PRIMARY KEY, value bigint NOT NULL)"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
    }
    let version: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(value), 0) FROM {s}.herald_meta WHERE key = 'schema_version'"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorCode::Validation,
            format!(
                "schema {schema} has version {version}, written by a newer herald; \
                 this build reads versions up to {SCHEMA_VERSION}"
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        let applied = run(conn, &s, schema, sql, i as i64 + 1).await;
        let end = if applied.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        sqlx::query(end)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        applied?;
        tracing::info!(schema, version = i + 1, "applied store migration");
    }
    Ok(())
}

/// Apply one migration; `{s}` is the quoted schema, `{n}` its bare name.
async fn run(
    conn: &mut PgConnection,
    s: &str,
    name: &str,
    statements: &[&str],
    version: i64,
) -> Result<()> {
    for statement in statements {
        sqlx::query(&statement.replace("{s}", s).replace("{n}", name))
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
    }
    sqlx::query(&format!(
        "INSERT INTO {s}.herald_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    ))
    .bind(version)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Upgrades (issue 22 item 10): a schema written by the previous
    //! version, with events, group positions and dead letters in it, opens
    //! with this build and keeps all of them.

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use herald::Bus;
    use sqlx::{Connection, PgConnection};

    use super::*;
    use crate::{PgConfig, PgStore};

    /// What undoes the last migration: applied to a schema this build
    /// wrote, it gives the previous version's layout (checked against a
    /// schema made by the previous migrations alone). A new migration
    /// replaces it.
    const UNDO_LAST: (i64, &[&str]) = (
        5,
        &[
            "DROP TABLE {s}.schema_versions",
            "DROP TABLE {s}.schema_subjects",
        ],
    );

    fn url() -> String {
        std::env::var("HERALD_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// The columns and indexes of `schema`, its name taken out.
    async fn layout(conn: &mut PgConnection, schema: &str) -> Vec<String> {
        let columns: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, column_default::text
             FROM information_schema.columns WHERE table_schema = $1
             ORDER BY table_name, column_name",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        columns
            .into_iter()
            .map(|c| format!("{c:?}"))
            .chain(indexes.into_iter().map(|(d,)| d))
            .map(|line| line.replace(schema, "<schema>"))
            .collect()
    }

    async fn open(schema: &str) -> (PgStore, Bus) {
        let config = PgConfig::new(url())
            .schema(schema)
            .poll_interval(Duration::from_millis(200));
        let store = PgStore::open(config).await.unwrap();
        (store.clone(), Bus::new(store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_of_the_previous_version_keeps_its_events_offsets_and_dead_letters() {
        assert_eq!(
            UNDO_LAST.0, SCHEMA_VERSION,
            "a new migration needs its undo here"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // `ht_<unix time>_…`: the store tests' sweep drops them later.
        let schema = format!("ht_{now}_{:08x}_up", std::process::id());
        let reference = format!("ht_{now}_{:08x}_ref", std::process::id());
        let (store, bus) = open(&schema).await;
        let history = herald_conformance::kept::write(&bus).await;
        // The bus's close waits for its group member to hand back what it
        // claimed past the history (a store closed under it would leave
        // those leases to run out after the ack wait).
        bus.close().await.unwrap();
        store.close().await;

        // The previous version's schema: this build's data, the last
        // migration undone, and the layout checked against that version's.
        let mut conn = PgConnection::connect(&url()).await.unwrap();
        let previous = MIGRATIONS.len() - 1;
        let s = quoted(&schema);
        for statement in UNDO_LAST.1 {
            sqlx::query(&statement.replace("{s}", &s))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query(&format!(
            "UPDATE {s}.herald_meta SET value = $1 WHERE key = 'schema_version'"
        ))
        .bind(previous as i64)
        .execute(&mut conn)
        .await
        .unwrap();
        let r = quoted(&reference);
        for statement in [
            format!("CREATE SCHEMA {r}"),
            format!("CREATE TABLE {r}.herald_meta (key text PRIMARY KEY, value bigint NOT NULL)"),
        ] {
            sqlx::query(&statement).execute(&mut conn).await.unwrap();
        }
        for (i, statements) in MIGRATIONS[..previous].iter().enumerate() {
            run(&mut conn, &r, &reference, statements, i as i64 + 1)
                .await
                .unwrap();
        }
        assert_eq!(
            layout(&mut conn, &schema).await,
            layout(&mut conn, &reference).await
        );

        let (store, bus) = open(&schema).await;
        let version: i64 = sqlx::query_scalar(&format!(
            "SELECT value FROM {s}.herald_meta WHERE key = 'schema_version'"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        history.check(&bus).await;
        store.close().await;
        for name in [&s, &r] {
            let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
}

//! The connection and the state every part of the store shares: the bottom
//! of the crate.
//!
//! Owns [`Inner`] (the path and config, the writer's request queue, the
//! read-only pool, the outbox pool, the [`Signals`] that wake readers and the
//! watches on them, the closed flag, the dead letters being written, the open
//! subscription queues), the connect options and the store file's creation,
//! the poll of `PRAGMA data_version` that notices other processes' commits,
//! the mapping of SQLite errors to herald's codes, decoding stored envelopes,
//! and `max_pos`. Imports nothing of the crate but `config` and the leaf
//! `request`. Does not own opening the store (`store`), the writer task
//! (`writer`) or the SQL of any table (`log`, `group`, `dead_letters`, …).

use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use herald::backend::dead_lettering::DeadLetterWrites;
use herald::{Envelope, Error, ErrorCode, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{SqliteConfig, Synchronous};
use crate::request::Request;

/// What every part of an open store shares (behind an `Arc`).
pub(crate) struct Inner {
    pub(crate) path: String,
    pub(crate) config: SqliteConfig,
    pub(crate) writer: mpsc::Sender<Request>,
    pub(crate) readers: SqlitePool,
    pub(crate) committed: watch::Receiver<i64>,
    /// Bumped when a group's state may have changed (claims, settlements,
    /// other processes' commits).
    pub(crate) groups: watch::Receiver<u64>,
    /// Raised by outbox commits, which bypass the writer.
    pub(crate) signals: Signals,
    /// Write connections for outbox transactions.
    pub(crate) outbox: SqlitePool,
    pub(crate) closed: AtomicBool,
    /// Raised each time retention deleted events here: group members hand
    /// back what they claimed before (it may be gone).
    pub(crate) pruned: std::sync::atomic::AtomicU64,
    /// Dead letters of group-less subscriptions being written.
    pub(crate) dead_letter_writes: DeadLetterWrites,
    /// Open subscription queues, closed with the store.
    pub(crate) queues: herald::backend::open_queues::OpenQueues,
    /// Group members' claims waiting in the writer (`parked`).
    pub(crate) parked: Arc<std::sync::atomic::AtomicUsize>,
    /// The log readers its group-less subscriptions share.
    pub(crate) tails: herald::backend::log_tail::Tails,
    /// The group members of this store handle, one claimer per group.
    pub(crate) claimers: herald::backend::member::Claimers,
    /// Kept or discarded (`HERALD_DEAD_LETTERS=off`), each dead letter.
    pub(crate) discards: herald::backend::dead_lettering::Discards,
}

impl Inner {
    /// A write transaction on the outbox pool (`BEGIN IMMEDIATE`: it holds
    /// the store's write lock until it ends).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.outbox
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(runtime_error)
    }
}

/// What waiting readers watch.
#[derive(Clone)]
pub(crate) struct Signals {
    /// Highest `pos` committed.
    pub(crate) committed: watch::Sender<i64>,
    /// Bumped whenever a group's state may have changed.
    pub(crate) groups: watch::Sender<u64>,
    /// Notified when a connection other than the writer's committed (the
    /// outbox, another process): parked claims run again.
    pub(crate) outside: Arc<Notify>,
}

impl Signals {
    /// Events up to `pos` are committed.
    pub(crate) fn raise(&self, pos: i64) {
        self.committed.send_if_modified(|current| {
            let newer = pos > *current;
            if newer {
                *current = pos;
            }
            newer
        });
    }

    /// Events up to `pos` are committed, not by the writer.
    pub(crate) fn raise_outside(&self, pos: i64) {
        self.raise(pos);
        self.outside.notify_one();
    }
}

/// Create the store's file readable and writable by its owner only (0600),
/// when it does not exist yet: events can hold anything. SQLite gives its
/// `-wal` and `-shm` files the database file's permissions. An existing
/// file keeps the permissions its owner gave it.
pub(crate) fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn connect_options(config: &SqliteConfig) -> SqliteConnectOptions {
    let synchronous = match config.sync_mode() {
        Synchronous::Full => SqliteSynchronous::Full,
        Synchronous::Normal => SqliteSynchronous::Normal,
    };
    SqliteConnectOptions::new()
        .filename(config.path())
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(config.busy())
        .foreign_keys(true)
}

pub(crate) async fn max_pos(pool: SqlitePool) -> Result<i64> {
    let pos: Vec<Option<i64>> = sqlx::query_scalar("SELECT max(pos) FROM events")
        .fetch_all(&pool)
        .await
        .map_err(runtime_error)?;
    Ok(pos.into_iter().flatten().next().unwrap_or(0))
}

/// Wake readers for commits made by other processes: `PRAGMA data_version`
/// changes when another connection commits.
pub(crate) async fn watch_other_processes(
    pool: SqlitePool,
    signals: Signals,
    every: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    let mut conn = None;
    loop {
        ticker.tick().await;
        if signals.committed.is_closed() || pool.is_closed() {
            return;
        }
        if conn.is_none() {
            conn = pool.acquire().await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let Ok(Some(version)) = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_all(&mut **c)
            .await
            .map(|v| v.into_iter().next())
        else {
            conn = None;
            continue;
        };
        if last.is_some_and(|l| l != version) {
            signals.groups.send_modify(|n| *n = n.wrapping_add(1));
            signals.outside.notify_one();
            if let Ok(Some(pos)) =
                sqlx::query_scalar::<_, Option<i64>>("SELECT max(pos) FROM events")
                    .fetch_all(&mut **c)
                    .await
                    .map(|v| v.into_iter().flatten().next())
            {
                signals.committed.send_if_modified(|current| {
                    let newer = pos > *current;
                    if newer {
                        *current = pos;
                    }
                    newer
                });
            }
        }
        last = Some(version);
    }
}

/// Decode a stored envelope; a row that does not decode is corruption.
pub(crate) fn decode_stored(bytes: &[u8]) -> Result<Envelope> {
    Envelope::from_stored(bytes).map_err(|e| {
        Error::internal(format!(
            "a stored envelope does not decode: {}",
            e.message()
        ))
    })
}

/// The error of a publish after the store closed.
pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the SQLite store is closed")
}

/// An error while opening the store at `path`.
pub(crate) fn open_error(path: &str, e: sqlx::Error) -> Error {
    let code = sqlite_code(&e);
    let (code, what) = match code {
        Some(26) | Some(11) => (
            ErrorCode::Validation,
            "it is not an SQLite database, or it is corrupt",
        ),
        Some(14) => (
            ErrorCode::Validation,
            "the file cannot be opened or created",
        ),
        Some(8) => (ErrorCode::Validation, "the location is read-only"),
        Some(5) | Some(6) => (ErrorCode::Unavailable, "another process holds it locked"),
        _ => (ErrorCode::Unavailable, "SQLite failed"),
    };
    Error::new(
        code,
        format!("cannot open the store at {path}: {what} ({e})"),
    )
    .with_source(e)
}

/// An error while using an open store: lock contention and I/O are
/// `UNAVAILABLE` (retryable); corruption is `INTERNAL`.
pub(crate) fn runtime_error(e: sqlx::Error) -> Error {
    let code = match sqlite_code(&e) {
        Some(11) | Some(26) => ErrorCode::Internal,
        _ => ErrorCode::Unavailable,
    };
    Error::new(code, format!("SQLite: {e}")).with_source(e)
}

/// [`runtime_error`] for the writer's SQL (rusqlite).
pub(crate) fn raw_error(e: rusqlite::Error) -> Error {
    let code = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            ErrorCode::Internal
        }
        _ => ErrorCode::Unavailable,
    };
    Error::new(code, format!("SQLite: {e}")).with_source(e)
}

/// The writer thread's connection: the store's file, with the store's
/// durability and busy timeout (the schema is in place: `store` migrates
/// it first).
pub(crate) fn open_writer(config: &SqliteConfig) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(config.path()).map_err(raw_error)?;
    conn.busy_timeout(config.busy()).map_err(raw_error)?;
    let synchronous = match config.sync_mode() {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    ))
    .map_err(raw_error)?;
    Ok(conn)
}

/// Run `f` (the writer's SQL) on a sqlx connection's own handle, on this
/// thread: how the outbox's transactions and the readers share that SQL.
pub(crate) async fn on_handle<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
) -> Result<T> {
    let mut locked = conn.lock_handle().await.map_err(runtime_error)?;
    // SAFETY: the handle is open and locked away from sqlx's worker while
    // `locked` lives, which outlives `raw`; `from_handle` borrows the handle
    // and does not close it when dropped.
    let raw = unsafe { rusqlite::Connection::from_handle(locked.as_raw_handle().as_ptr()) }
        .map_err(raw_error)?;
    f(&raw)
}

/// The primary SQLite result code of `e`, if it is a database error.
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    let db = e.as_database_error()?;
    let code = i32::from_str(db.code()?.as_ref()).ok()?;
    Some(code & 0xff)
}

//! Opening the store and reading the log.
//!
//! Owns [`SqliteStore`]: the checks and migrations on open, the writer task
//! (see `append`), the pool of read-only connections, replay, and the
//! mapping of SQLite errors to herald's codes.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald::{Envelope, Error, ErrorCode, Result, StartPosition, Topic};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::ConnectOptions;
use tokio::sync::{mpsc, oneshot};

use crate::append::{self, Request};
use crate::config::{SqliteConfig, Synchronous};
use crate::schema;

/// Read connections in the pool.
const READERS: u32 = 4;
/// Publishes waiting for the writer before `publish` waits for room.
const WRITER_QUEUE: usize = 4096;

/// The embedded durable store: an append-only event log in one SQLite file
/// (WAL mode). Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = herald_sqlite::SqliteStore::open(
///     herald_sqlite::SqliteConfig::new(dir.path().join("events.db")),
/// ).await?;
/// let event = herald::Publish::into_envelope(
///     herald::Message::json("orders.placed", &1)?,
///     &std::sync::Arc::from("shop"),
/// )?;
/// assert_eq!(store.append(vec![event]).await?, [1]);
/// assert_eq!(store.replay("orders.placed", herald::StartPosition::Earliest, 10).await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: String,
    pub(crate) config: SqliteConfig,
    writer: mpsc::Sender<Request>,
    pub(crate) readers: SqlitePool,
    closed: AtomicBool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open (or create) the store, applying pending migrations.
    ///
    /// Errors name the path: a missing directory, a file that is not an
    /// SQLite database (or is corrupt), a read-only location, or a store
    /// written by a newer herald are `VALIDATION`; a store locked by another
    /// process beyond the busy timeout is `UNAVAILABLE`.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStore> {
        config.validate()?;
        let path = config.path().display().to_string();
        if let Some(dir) = config.path().parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::validation(format!(
                    "cannot open the store at {path}: directory {} does not exist",
                    dir.display()
                )));
            }
        }
        if config.path().is_dir() {
            return Err(Error::validation(format!(
                "cannot open the store at {path}: it is a directory"
            )));
        }
        let options = connect_options(&config);
        let mut conn = options.connect().await.map_err(|e| open_error(&path, e))?;
        schema::migrate(&mut conn, &path).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| open_error(&path, e))?;
        let (writer, requests) = mpsc::channel(WRITER_QUEUE);
        let dedupe_ms = config.dedupe().as_millis().min(i64::MAX as u128) as i64;
        tokio::spawn(append::writer(
            conn,
            requests,
            config.group_max(),
            dedupe_ms,
        ));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                config,
                writer,
                readers,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        self.inner.config.path()
    }

    /// Append `batch` durably (on disk before `Ok`, per the configured
    /// [`Synchronous`] mode) and return each envelope's `seq`.
    pub async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(append::closed());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, done) = oneshot::channel();
        self.inner
            .writer
            .send(Request { batch, reply })
            .await
            .map_err(|_| append::closed())?;
        done.await.map_err(|_| append::closed())?
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM topics WHERE name = ?")
            .bind(topic.as_str())
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(runtime_error)?;
        Ok(seq.map(|s| s as u64))
    }

    /// Up to `limit` events of `topic` from `from`, in `seq` order; page on
    /// with `StartPosition::Seq(last + 1)`. Reading never touches any group.
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let topic = Topic::new(topic)?;
        let limit = limit.clamp(1, 10_000) as i64;
        let rows: Vec<(Vec<u8>,)> = match from {
            StartPosition::Earliest => {
                sqlx::query_as("SELECT envelope FROM events WHERE topic = ? ORDER BY seq LIMIT ?")
                    .bind(topic.as_str())
                    .bind(limit)
                    .fetch_all(&self.inner.readers)
                    .await
            }
            StartPosition::Latest => Ok(Vec::new()),
            StartPosition::Seq(seq) => {
                sqlx::query_as("SELECT envelope FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?")
                    .bind(topic.as_str())
                    .bind(seq.min(i64::MAX as u64) as i64)
                    .bind(limit)
                    .fetch_all(&self.inner.readers)
                    .await
            }
            StartPosition::Time(t) => {
                sqlx::query_as(
                    "SELECT envelope FROM events WHERE topic = ? AND created_ms >= ? ORDER BY seq LIMIT ?",
                )
                .bind(topic.as_str())
                .bind(t.timestamp_millis())
                .bind(limit)
                .fetch_all(&self.inner.readers)
                .await
            }
        }
        .map_err(runtime_error)?;
        rows.into_iter()
            .map(|(bytes,)| decode_stored(&bytes))
            .collect()
    }

    /// Stop: later publishes fail with `UNAVAILABLE`. Idempotent.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

fn connect_options(config: &SqliteConfig) -> SqliteConnectOptions {
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

/// Decode a stored envelope; a row that does not decode is corruption.
pub(crate) fn decode_stored(bytes: &[u8]) -> Result<Envelope> {
    Envelope::from_json(bytes).map_err(|e| {
        Error::internal(format!(
            "a stored envelope does not decode: {}",
            e.message()
        ))
    })
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

/// The primary SQLite result code of `e`, if it is a database error.
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    let db = e.as_database_error()?;
    let code = i32::from_str(db.code()?.as_ref()).ok()?;
    Some(code & 0xff)
}

//! Opening the store and reading the log.
//!
//! Owns [`SqliteStore`]: the checks and migrations on open, the writer task
//! (see `append`), the pool of read-only connections, the commit watch that
//! wakes tailing subscriptions (at once for this process's commits, by polling
//! `PRAGMA data_version` for other processes'), replay, and the mapping of
//! SQLite errors to herald's codes.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald::{Envelope, Error, ErrorCode, Result, StartPosition, Topic};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::ConnectOptions;
use tokio::sync::{mpsc, oneshot, watch};

use crate::append;
use crate::config::{SqliteConfig, Synchronous};
use crate::schema;
use crate::writer::{self, Request, Signals};

/// Read connections in the pool.
const READERS: u32 = 4;
/// Write connections kept for outbox transactions.
const OUTBOX_CONNECTIONS: u32 = 4;
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
    /// Open subscription queues, closed with the store.
    pub(crate) queues: std::sync::Mutex<Vec<std::sync::Weak<herald::queue::Queue>>>,
}

impl herald::queue::QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: herald::DeadLetter) {
        match self.writer.try_send(Request::DeadLetter(Box::new(letter))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                let writer = self.writer.clone();
                tokio::spawn(async move {
                    let _ = writer.send(request).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(path = %self.path, "the store closed before a dead letter was written");
            }
        }
    }
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
        create_private(config.path()).map_err(|e| {
            Error::new(
                ErrorCode::Validation,
                format!("cannot create the store at {path}: {e}"),
            )
        })?;
        let options = connect_options(&config);
        let conn = options.connect().await.map_err(|e| open_error(&path, e))?;
        let conn = schema::migrate(conn, path.clone()).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| open_error(&path, e))?;
        let (writer, requests) = mpsc::channel(WRITER_QUEUE);
        let dedupe_ms = config.dedupe_ms();
        let (committed_tx, committed) = watch::channel(max_pos(readers.clone()).await?);
        let (groups_tx, groups) = watch::channel(0u64);
        let signals = Signals {
            committed: committed_tx,
            groups: groups_tx,
        };
        let poll = config.poll();
        tokio::spawn(watch_other_processes(
            readers.clone(),
            signals.clone(),
            poll,
        ));
        tokio::spawn(writer::run(
            conn,
            requests,
            signals.clone(),
            config.group_max(),
            dedupe_ms,
        ));
        let outbox = SqlitePoolOptions::new()
            .max_connections(OUTBOX_CONNECTIONS)
            .min_connections(0)
            .connect_lazy_with(options);
        let store = SqliteStore {
            inner: Arc::new(Inner {
                path,
                config,
                writer,
                readers,
                committed,
                groups,
                signals,
                outbox,
                closed: AtomicBool::new(false),
                queues: std::sync::Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(crate::retention::run(Arc::downgrade(&store.inner)));
        Ok(store)
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
            .send(Request::Append { batch, reply })
            .await
            .map_err(|_| append::closed())?;
        done.await.map_err(|_| append::closed())?
    }

    /// Wait until every write queued before this call is committed (dead
    /// letters are queued without waiting, from inside a settle).
    pub(crate) async fn flush(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let request = Request::Append {
            batch: Vec::new(),
            reply,
        };
        self.inner
            .writer
            .send(request)
            .await
            .map_err(|_| append::closed())?;
        done.await.map_err(|_| append::closed())?.map(|_| ())
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM topics WHERE name = ?")
            .bind(topic.as_str())
            .fetch_all(&self.inner.readers)
            .await
            .map_err(runtime_error)?
            .into_iter()
            .next();
        Ok(seq.map(|s| s as u64))
    }

    /// Every topic with events, by name, with its last `seq`.
    pub async fn topics(&self) -> Result<Vec<herald::TopicInfo>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, last_seq FROM topics WHERE last_seq > 0 ORDER BY name")
                .fetch_all(&self.inner.readers)
                .await
                .map_err(runtime_error)?;
        rows.into_iter()
            .map(|(name, last)| Ok(herald::TopicInfo::new(Topic::new(name)?, last as u64)))
            .collect()
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
        let limit = limit.min(10_000) as i64;
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

    /// Stop: later publishes fail with `UNAVAILABLE` and subscriptions end.
    /// Idempotent.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let queues =
            std::mem::take(&mut *self.inner.queues.lock().unwrap_or_else(|p| p.into_inner()));
        for q in queues.iter().filter_map(std::sync::Weak::upgrade) {
            q.close();
        }
    }
}

/// Create the store's file readable and writable by its owner only (0600),
/// when it does not exist yet: events can hold anything. SQLite gives its
/// `-wal` and `-shm` files the database file's permissions. An existing
/// file keeps the permissions its owner gave it.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
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

pub(crate) async fn max_pos(pool: SqlitePool) -> Result<i64> {
    let pos: Vec<Option<i64>> = sqlx::query_scalar("SELECT max(pos) FROM events")
        .fetch_all(&pool)
        .await
        .map_err(runtime_error)?;
    Ok(pos.into_iter().flatten().next().unwrap_or(0))
}

/// Wake readers for commits made by other processes: `PRAGMA data_version`
/// changes when another connection commits.
async fn watch_other_processes(pool: SqlitePool, signals: Signals, every: std::time::Duration) {
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

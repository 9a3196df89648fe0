//! The store's public handle: opening and closing it, and the public
//! methods, which delegate.
//!
//! Owns [`SqliteStore`]: the checks on open (path, directory, the file made
//! private), the schema's migrations run on the write connection, the pools
//! (read-only readers, the outbox's writers), and the background tasks it
//! starts — the writer (`writer`), the poke of its parked claims
//! (`parked`), the watch on other processes' commits (`conn`) and retention
//! (`retention`); `close`. The top of the crate: it
//! imports what it opens and delegates to; nothing imports it but
//! `transport` (the traits on [`SqliteStore`]) and `lib`. Does not own the
//! shared state (`conn::Inner`), the log's SQL (`log`), the reads
//! (`inspect`) or the traits (`transport`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::backend::dead_lettering::{DeadLetterWrites, Discards, DEAD_LETTER_WRITE_WAIT};
use herald::{Envelope, Error, ErrorCode, Result, StartPosition, Topic};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SqliteConfig;
use crate::conn::{
    closed, connect_options, create_private, max_pos, open_error, open_writer,
    watch_other_processes, Inner, Signals,
};
use crate::contracts::SqliteSchemas;
use crate::dedupe::SqliteDedupe;
use crate::outbox::{self, Outbox};
use crate::parked::{self, Parked};
use crate::request::Request;
use crate::{inspect, retention, schema, writer};

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
        let mut conn = schema::migrate(conn, path.clone()).await?;
        let forever = config.dedupes_forever();
        schema::unique_keys(&mut conn, &path, forever).await?;
        sqlx::Connection::close(conn)
            .await
            .map_err(|e| open_error(&path, e))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| open_error(&path, e))?;
        let (writer, requests) = mpsc::channel(WRITER_QUEUE);
        let dedupe_ms = config.dedupe_ms();
        let discards = Discards::new(config.dead_letters());
        let (committed_tx, committed) = watch::channel(max_pos(readers.clone()).await?);
        let (groups_tx, groups) = watch::channel(0u64);
        let signals = Signals {
            committed: committed_tx,
            groups: groups_tx,
            outside: Arc::default(),
        };
        let poll = config.poll();
        tokio::spawn(watch_other_processes(
            readers.clone(),
            signals.clone(),
            poll,
        ));
        let write = open_writer(&config)?;
        let gather = writer::Gather {
            max: config.group_max(),
            settlements: config.settle_batch(),
            window: config.settle_window(),
        };
        let promised = config.sync_mode();
        let parked = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn({
                let signals = signals.clone();
                let parked = Parked::new(parked.clone());
                move || {
                    writer::run(
                        write, requests, signals, parked, gather, dedupe_ms, promised,
                    )
                }
            })
            .map_err(|e| herald::Error::internal(format!("cannot start the SQLite writer: {e}")))?;
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
                pruned: Default::default(),
                dead_letter_writes: DeadLetterWrites::default(),
                queues: Default::default(),
                parked,
                tails: Default::default(),
                claimers: Default::default(),
                discards,
            }),
        };
        tokio::spawn(retention::run(Arc::downgrade(&store.inner)));
        tokio::spawn(parked::poke(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        self.inner.config.path()
    }

    /// Append `batch` durably (on disk before `Ok`, per the configured
    /// [`Synchronous`](crate::Synchronous) mode) and return each envelope's
    /// `seq`.
    pub async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, done) = oneshot::channel();
        self.inner
            .writer
            .send(Request::Append { batch, reply })
            .await
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        inspect::last_seq(&self.inner, topic).await
    }

    /// Every topic with events, by name, with its last `seq`.
    pub async fn topics(&self) -> Result<Vec<herald::TopicInfo>> {
        inspect::topics(&self.inner).await
    }

    /// Up to `limit` (at most `MAX_REPLAY_PAGE`) events of `topic` from
    /// `from`, in `seq` order; page on
    /// with `StartPosition::Seq(last + 1)`. Reading never touches any group.
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        inspect::replay(&self.inner, topic, from, limit).await
    }

    /// Apply retention now; returns how many events were deleted.
    pub async fn apply_retention(&self) -> Result<u64> {
        retention::apply(&self.inner).await
    }

    /// Begin an [`Outbox`] transaction (`BEGIN IMMEDIATE`: it holds the
    /// store's write lock until it ends, so keep it short).
    pub async fn begin(&self) -> Result<Outbox> {
        outbox::begin(&self.inner).await
    }

    /// Append `batch` inside a transaction the caller began on their own
    /// connection to this store's file (begin it with `BEGIN IMMEDIATE`: a
    /// deferred transaction that read first may fail to take the write lock).
    /// The events exist iff that transaction commits.
    pub async fn publish_in(
        &self,
        conn: &mut SqliteConnection,
        batch: Vec<Envelope>,
    ) -> Result<Vec<u64>> {
        outbox::publish_in(&self.inner, conn, batch).await
    }

    /// Wake this process's subscribers after a commit made outside the store
    /// (see [`publish_in`](SqliteStore::publish_in)).
    pub async fn wake(&self) -> Result<()> {
        outbox::wake(&self.inner).await
    }

    /// A dedupe store in this store remembering ids for `window`
    /// (1 ms – 7 days, as `HERALD_DEDUPE_WINDOW`).
    pub fn dedupe(&self, window: Duration) -> Result<SqliteDedupe> {
        SqliteDedupe::new(self.inner.clone(), window)
    }

    /// The store's schema registry: what [`Bus::schemas`](herald::Bus::schemas)
    /// registers into and every publish on a bus over it is checked
    /// against.
    pub fn schemas(&self) -> SqliteSchemas {
        SqliteSchemas::new(self.inner.clone())
    }

    /// Stop: later publishes fail with `UNAVAILABLE` and subscriptions end.
    /// Idempotent.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Members waiting in the writer learn of it now.
        let _ = self.inner.writer.send(Request::Close).await;
        self.inner.queues.close();
        self.inner
            .dead_letter_writes
            .settled(DEAD_LETTER_WRITE_WAIT)
            .await;
    }
}

//! [`PgStore`]: opening the store, publishing, reading the log.
//!
//! Owns the connection pool, error mapping, the wake-up signal (the highest
//! `pos` known to be committed, raised by LISTEN/NOTIFY and a slow fallback
//! poll), `publish` (outbox insert, commit, then wait for the sequencer's
//! receipts), the outbox entry point for the caller's own transaction,
//! `last_seq`, the topic list and `replay`. Sequencing is `sequencer`'s,
//! delivery `tail`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use herald::{Envelope, Error, ErrorCode, Result, StartPosition, Topic, TopicInfo};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::PgConfig;
use crate::schema::{self, quoted};
use herald::config::redact;

/// Events read per replay or tail query.
pub(crate) const PAGE: i64 = 500;

/// The PostgreSQL store: an event log whose events are appended through an
/// outbox table, so they can be written inside the caller's transaction.
///
/// ```no_run
/// use herald::{Bus, Message};
/// use herald_postgres::{PgConfig, PgStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let store = PgStore::open(PgConfig::new("postgres://127.0.0.1:5432/test")).await?;
/// let bus = Bus::new(store.clone());
/// assert_eq!(bus.publish(Message::json("orders.placed", &1)?).await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: PgConfig,
    pub(crate) pool: PgPool,
    /// The quoted schema name, ready for SQL.
    pub(crate) s: String,
    /// NOTIFY channels: new outbox rows, newly sequenced events.
    pub(crate) outbox_channel: String,
    pub(crate) events_channel: String,
    /// NOTIFY channel: a group member handed an event back (nack, defer,
    /// release, dead letter), so idle members elsewhere may take the next.
    pub(crate) groups_channel: String,
    /// The highest `pos` known committed.
    pub(crate) committed: watch::Sender<i64>,
    /// Bumped on every sequencer notification: a round of duplicates
    /// writes receipts but no events.
    pub(crate) receipts: watch::Sender<u64>,
    /// Bumped when a group's deliveries change (settlements here, NOTIFY
    /// from other processes).
    pub(crate) groups: watch::Sender<u64>,
    pub(crate) closed: AtomicBool,
    /// Open subscription queues, closed with the store.
    pub(crate) queues: std::sync::Mutex<Vec<Weak<herald::queue::Queue>>>,
    /// The dead-letter writer's inbox.
    pub(crate) dead: tokio::sync::mpsc::UnboundedSender<crate::dead_letters::Job>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &redact(self.inner.config.url()))
            .field("schema", &self.inner.config.schema_name())
            .finish()
    }
}

impl PgStore {
    /// Connect, apply pending migrations, and start the sequencer and the
    /// notification listener.
    ///
    /// A malformed URL or a schema written by a newer herald is
    /// `VALIDATION`; a server that cannot be reached is `UNAVAILABLE`.
    pub async fn open(config: PgConfig) -> Result<PgStore> {
        config.validate()?;
        let options: sqlx::postgres::PgConnectOptions = config.url().parse().map_err(|e| {
            Error::validation(format!(
                "HERALD_STORE {:?} is not a valid PostgreSQL URL: {e}",
                redact(config.url())
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.pool())
            .acquire_timeout(config.timeout())
            .connect_with(options)
            .await
            .map_err(|e| {
                // A wrong password or database will not fix itself.
                let code = match &e {
                    sqlx::Error::Database(db)
                        if db
                            .code()
                            .is_some_and(|c| c.starts_with("28") || c == "3D000") =>
                    {
                        ErrorCode::Validation
                    }
                    _ => ErrorCode::Unavailable,
                };
                Error::new(
                    code,
                    format!("cannot connect to {}: {e}", redact(config.url())),
                )
                .with_source(e)
            })?;
        let mut conn = pool.acquire().await.map_err(runtime_error)?;
        schema::migrate(&mut conn, config.schema_name()).await?;
        drop(conn);
        let s = quoted(config.schema_name());
        let start = current_pos(&pool, &s).await?;
        let dead = crate::dead_letters::writer(pool.clone(), s.clone());
        let inner = Arc::new(Inner {
            outbox_channel: format!("herald_outbox_{}", config.schema_name()),
            events_channel: format!("herald_events_{}", config.schema_name()),
            groups_channel: format!("herald_groups_{}", config.schema_name()),
            config,
            pool,
            s,
            committed: watch::Sender::new(start),
            receipts: watch::Sender::new(0),
            groups: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            queues: std::sync::Mutex::new(Vec::new()),
            dead,
        });
        tokio::spawn(listen_for_events(Arc::downgrade(&inner)));
        tokio::spawn(crate::sequencer::run(Arc::downgrade(&inner)));
        tokio::spawn(crate::retention::run(Arc::downgrade(&inner)));
        Ok(PgStore { inner })
    }

    /// The PostgreSQL schema the store's tables live in.
    pub fn schema(&self) -> &str {
        self.inner.config.schema_name()
    }

    /// The pool the store uses; begin your own transactions on it to
    /// publish through the outbox ([`PgStore::publish_in`]).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The outbox: append `batch` (envelopes from
    /// [`Bus::prepare`](herald::Bus::prepare)) inside the caller's
    /// transaction on `conn`. The events exist if and only if that
    /// transaction commits; the commit's NOTIFY wakes the sequencer, which
    /// gives them their `seq`s and wakes subscribers — no flush call.
    ///
    /// ```no_run
    /// use herald::{Bus, Message};
    /// use herald_postgres::{PgConfig, PgStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgStore::open(PgConfig::new("postgres://127.0.0.1:5432/test")).await?;
    /// let bus = Bus::new(store.clone());
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("CREATE TEMP TABLE orders (id int)").execute(&mut *tx).await?;
    /// sqlx::query("INSERT INTO orders VALUES (7)").execute(&mut *tx).await?;
    /// store.publish_in(&mut tx, bus.prepare(Message::json("orders.placed", &7)?)?).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_in(&self, conn: &mut PgConnection, batch: Vec<Envelope>) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        insert_outbox(&self.inner, conn, &batch).await
    }

    /// Append `batch` in a transaction of its own and wait until the
    /// sequencer has given each event its `seq` (a duplicate idempotency
    /// key within the window gets the original's).
    pub async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = batch.iter().map(|e| e.id()).collect();
        let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
        insert_outbox(inner, &mut tx, &batch).await?;
        tx.commit().await.map_err(runtime_error)?;
        wait_for_receipts(inner, &ids).await
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT last_seq FROM {}.topics WHERE name = $1",
            self.inner.s
        ))
        .bind(topic.as_str())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(runtime_error)?;
        Ok(seq.map(|s| s as u64))
    }

    /// Up to `limit` events of `topic` from `from`, in `seq` order.
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let s = &self.inner.s;
        let limit = limit.min(i64::MAX as usize) as i64;
        let (sql, bound) = match from {
            StartPosition::Time(t) => (
                format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND created_ms >= $2 ORDER BY seq LIMIT $3"),
                t.timestamp_millis(),
            ),
            StartPosition::Seq(n) => (
                format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND seq >= $2 ORDER BY seq LIMIT $3"),
                n.min(i64::MAX as u64) as i64,
            ),
            StartPosition::Latest => return Ok(Vec::new()),
            StartPosition::Earliest => (
                format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND seq >= $2 ORDER BY seq LIMIT $3"),
                0,
            ),
        };
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(&sql)
            .bind(topic)
            .bind(bound)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(runtime_error)?;
        rows.iter().map(|b| decode_stored(b)).collect()
    }

    /// Stop: later publishes fail with `UNAVAILABLE`, subscriptions end,
    /// the sequencer and listener stop, the pool closes. Idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let queues =
            std::mem::take(&mut *self.inner.queues.lock().unwrap_or_else(|p| p.into_inner()));
        for q in queues.iter().filter_map(Weak::upgrade) {
            q.close();
        }
        crate::dead_letters::flush(&self.inner).await;
        self.inner.pool.close().await;
    }
}

/// Every topic with events, by name, with its last `seq`, read through
/// `conn` (the pool, or a transaction for a snapshot).
pub(crate) async fn topics(conn: impl sqlx::PgExecutor<'_>, s: &str) -> Result<Vec<TopicInfo>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT name, last_seq FROM {s}.topics WHERE last_seq > 0 ORDER BY name COLLATE \"C\""
    ))
    .fetch_all(conn)
    .await
    .map_err(runtime_error)?;
    rows.into_iter()
        .map(|(name, last)| Ok(TopicInfo::new(Topic::new(name)?, last as u64)))
        .collect()
}

/// Insert `batch` into the outbox on `conn`. At commit, a deferred trigger
/// wakes the sequencer if it is idle (see `schema`).
pub(crate) async fn insert_outbox(
    inner: &Inner,
    conn: &mut PgConnection,
    batch: &[Envelope],
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut topics = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    for env in batch {
        ids.push(env.id());
        topics.push(env.topic().as_str().to_owned());
        keys.push(env.idempotency_key().into_owned());
        bodies.push(env.to_json()?);
    }
    sqlx::query(&format!(
        "INSERT INTO {}.outbox (envelope_id, topic, idempotency_key, envelope)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[])",
        inner.s
    ))
    .bind(&ids)
    .bind(&topics)
    .bind(&keys)
    .bind(&bodies)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// Wait until the sequencer has written a receipt for each of `ids`;
/// their `seq`s in order.
async fn wait_for_receipts(inner: &Inner, ids: &[Uuid]) -> Result<Vec<u64>> {
    let deadline = tokio::time::Instant::now() + inner.config.timeout();
    let mut receipts = inner.receipts.subscribe();
    loop {
        receipts.borrow_and_update();
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT envelope_id, seq FROM {}.receipts WHERE envelope_id = ANY($1)",
            inner.s
        ))
        .bind(ids)
        .fetch_all(&inner.pool)
        .await
        .map_err(runtime_error)?;
        let seqs: std::collections::HashMap<Uuid, i64> = rows.into_iter().collect();
        // An id may repeat in a batch (an envelope published twice): it has
        // one receipt.
        if let Some(all) = ids
            .iter()
            .map(|id| seqs.get(id).map(|s| *s as u64))
            .collect::<Option<Vec<u64>>>()
        {
            return Ok(all);
        }
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        tokio::select! {
            _ = receipts.changed() => {}
            _ = tokio::time::sleep(inner.config.poll()) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the events are committed but were not sequenced within {:?} \
                         (is a long transaction or a stopped sequencer holding them back?)",
                        inner.config.timeout()
                    ),
                ));
            }
        }
    }
}

/// The `pos` the next event will get, minus one.
pub(crate) async fn current_pos(pool: &PgPool, s: &str) -> Result<i64> {
    let next: i64 = sqlx::query_scalar(&format!(
        "SELECT value FROM {s}.herald_meta WHERE key = 'next_pos'"
    ))
    .fetch_one(pool)
    .await
    .map_err(runtime_error)?;
    Ok(next - 1)
}

/// Raise `committed` on every sequencer notification; poll as a fallback
/// (missed notifications, reconnects).
async fn listen_for_events(inner: Weak<Inner>) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.closed.load(Ordering::Acquire) {
            return;
        }
        if listener.is_none() {
            if let Ok(mut l) = PgListener::connect_with(&me.pool).await {
                let channels = [me.events_channel.as_str(), me.groups_channel.as_str()];
                if l.listen_all(channels).await.is_ok() {
                    listener = Some(l);
                }
            }
        }
        let poll = me.config.poll();
        let woke = match listener.as_mut() {
            Some(l) => tokio::time::timeout(poll, l.recv()).await,
            None => {
                drop(me);
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        match woke {
            Ok(Ok(n)) if n.channel() == me.groups_channel => {
                me.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(Ok(n)) => {
                if let Ok(pos) = n.payload().parse::<i64>() {
                    raise(&me.committed, pos);
                }
                me.receipts.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(Err(_)) => listener = None,
            Err(_) => {
                if let Ok(pos) = current_pos(&me.pool, &me.s).await {
                    raise(&me.committed, pos);
                }
                me.receipts.send_modify(|n| *n = n.wrapping_add(1));
                me.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

pub(crate) fn raise(committed: &watch::Sender<i64>, pos: i64) {
    committed.send_if_modified(|current| {
        let newer = pos > *current;
        if newer {
            *current = pos;
        }
        newer
    });
}

pub(crate) fn decode_stored(bytes: &[u8]) -> Result<Envelope> {
    Envelope::from_stored(bytes).map_err(|e| {
        Error::internal(format!(
            "a stored envelope does not decode: {}",
            e.message()
        ))
    })
}

/// A database error at run time: connection trouble is `UNAVAILABLE`
/// (retryable), the rest `INTERNAL`.
pub(crate) fn runtime_error(e: sqlx::Error) -> Error {
    let code = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => ErrorCode::Unavailable,
        // Connection trouble, too many connections, serialization failures
        // and deadlocks, a read-only standby, timeouts: worth retrying.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| retryable_state(&c)) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    };
    Error::new(code, format!("postgres: {e}")).with_source(e)
}

fn retryable_state(code: &str) -> bool {
    ["08", "53", "57P", "40001", "40P01", "25006", "57014"]
        .iter()
        .any(|p| code.starts_with(p))
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the store is closed")
}

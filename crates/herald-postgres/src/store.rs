//! [`PgStore`]: the public handle, at the top of the crate.
//!
//! Owns opening the store (connect, migrate, start the listener, the
//! sequencer and retention), closing it, and the public inherent methods,
//! which delegate: the connection and the state every part shares are
//! `conn`'s, writing through the outbox `outbox`'s and `log`'s, sequencing
//! the `sequencer`'s, reading `inspect`'s, retention `retention`'s,
//! delivery `tail`'s and `group`'s, the trait impls `transport`'s. Nothing
//! below imports it; a part that needs the store is handed `Arc<Inner>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald::backend::dead_lettering::Discards;
use herald::config::redact;
use herald::{Envelope, Result, StartPosition, Topic};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::config::PgConfig;
use crate::conn::{current_pos, runtime_error, Inner};
use crate::contracts::PgSchemas;
use crate::dedupe::PgDedupe;
use crate::schema::{self, quoted};

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
        let pool = crate::conn::connect(&config).await?;
        let mut conn = pool.acquire().await.map_err(runtime_error)?;
        let forever = config.dedupes_forever();
        schema::migrate(&mut conn, config.schema_name(), forever).await?;
        drop(conn);
        let s = quoted(config.schema_name());
        let start = current_pos(&pool, &s).await?;
        let (settlements, pending) = tokio::sync::mpsc::channel(crate::conn::SETTLEMENTS_WAITING);
        let inner = Arc::new(Inner {
            settlements,
            outbox_channel: format!("herald_outbox_{}", config.schema_name()),
            events_channel: format!("herald_events_{}", config.schema_name()),
            groups_channel: format!("herald_groups_{}", config.schema_name()),
            discards: Discards::new(config.dead_letters()),
            config,
            pool,
            s,
            committed: watch::Sender::new(start),
            receipts: watch::Sender::new(0),
            groups: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            pruned: Default::default(),
            queues: Default::default(),
            dead_letter_writes: Default::default(),
            tails: Default::default(),
            claimers: Default::default(),
        });
        tokio::spawn(crate::conn::listen_for_events(Arc::downgrade(&inner)));
        tokio::spawn(crate::sequencer::run(Arc::downgrade(&inner)));
        tokio::spawn(crate::retention::run(Arc::downgrade(&inner)));
        tokio::spawn(crate::settle::write(Arc::downgrade(&inner), pending));
        Ok(PgStore { inner })
    }

    /// A dedupe store in this schema remembering the ids each handler
    /// group processed for `window` (1 ms – 7 days, as
    /// `HERALD_DEDUPE_WINDOW`); [`herald::dedupe::Dedupe::in_store`] makes
    /// the same.
    pub fn dedupe(&self, window: std::time::Duration) -> Result<PgDedupe> {
        PgDedupe::new(self.inner.clone(), window)
    }

    /// The store's schema registry: what [`Bus::schemas`](herald::Bus::schemas)
    /// registers into and every publish on a bus over it is checked
    /// against.
    pub fn schemas(&self) -> PgSchemas {
        PgSchemas::new(self.inner.clone())
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
        crate::outbox::publish_in(&self.inner, conn, batch).await
    }

    /// Append `batch` in a transaction of its own and wait until the
    /// sequencer has given each event its `seq` (a duplicate idempotency
    /// key within the window gets the original's).
    pub async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        crate::log::append(&self.inner, batch).await
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        crate::inspect::last_seq(&self.inner, topic).await
    }

    /// Up to `limit` (at most `MAX_REPLAY_PAGE`) events of `topic` from
    /// `from`, in `seq` order.
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        crate::inspect::replay(&self.inner, topic, from, limit).await
    }

    /// Apply retention now; how many events were deleted.
    ///
    /// ```no_run
    /// use herald::backend::retention::Retention;
    /// use herald_postgres::{PgConfig, PgStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let config = PgConfig::new("postgres://127.0.0.1:5432/test")
    ///     .retention(Retention::default().max_events(1_000_000));
    /// let store = PgStore::open(config).await?;
    /// let deleted = store.apply_retention().await?;
    /// # Ok(()) }
    /// ```
    pub async fn apply_retention(&self) -> Result<u64> {
        crate::retention::apply(&self.inner).await
    }

    /// Stop: later publishes fail with `UNAVAILABLE`, subscriptions end,
    /// the sequencer and listener stop, the pool closes. Idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.queues.close();
        crate::dead_letters::flush(&self.inner).await;
        self.inner.pool.close().await;
    }
}

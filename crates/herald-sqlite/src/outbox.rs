//! The outbox: events appended inside the caller's own SQLite transaction.
//!
//! Owns [`Outbox`], a write transaction on the store's file in which the
//! caller runs their own statements and publishes events: the events exist
//! if and only if the transaction commits. On commit the store wakes this
//! process's subscribers at once (no polling delay); other processes notice
//! within their poll interval.
//!
//! For a transaction the caller began on their own pool,
//! [`SqliteStore::publish_in`] appends inside it; subscribers then notice the
//! commit by polling (`HERALD_POLL_INTERVAL`) unless the caller calls
//! [`SqliteStore::wake`] after committing.

use std::ops::{Deref, DerefMut};

use herald::{Envelope, Result};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::store::{runtime_error, SqliteStore};

/// A write transaction for the caller's statements and events; see the
/// module docs. Dropped without [`commit`](Outbox::commit), it rolls back.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use herald::{Bus, Message};
/// use herald_sqlite::{SqliteConfig, SqliteStore};
///
/// let store = SqliteStore::open(SqliteConfig::new(dir.path().join("app.db"))).await?;
/// let bus = Bus::new(store.clone());
/// # let mut setup = store.begin().await?;
/// # sqlx::query("CREATE TABLE orders (id INTEGER)").execute(&mut *setup).await.unwrap();
/// # setup.commit().await?;
///
/// let mut tx = store.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (7)").execute(&mut *tx).await.unwrap();
/// tx.publish(bus.prepare(Message::json("orders.placed", &7)?)?).await?;
/// tx.commit().await?; // the row and the event, or neither
/// # Ok(()) }
/// ```
pub struct Outbox {
    tx: Transaction<'static, Sqlite>,
    store: SqliteStore,
    /// The `pos` of the last event this transaction appended.
    last_pos: Option<i64>,
}

impl SqliteStore {
    /// Begin an [`Outbox`] transaction (`BEGIN IMMEDIATE`: it holds the
    /// store's write lock until it ends, so keep it short).
    pub async fn begin(&self) -> Result<Outbox> {
        let tx = self
            .inner
            .outbox
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(runtime_error)?;
        Ok(Outbox {
            tx,
            store: self.clone(),
            last_pos: None,
        })
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
        let dedupe = self.inner.config.dedupe_ms();
        let mut appended = crate::append::append(conn, &[batch.as_slice()], dedupe).await?;
        Ok(appended.seqs.pop().unwrap_or_default())
    }

    /// Wake this process's subscribers after a commit made outside the store
    /// (see [`publish_in`](SqliteStore::publish_in)).
    pub async fn wake(&self) -> Result<()> {
        let pos = crate::store::max_pos(self.inner.readers.clone()).await?;
        self.inner.signals.raise(pos);
        Ok(())
    }
}

impl Outbox {
    /// Append `batch` (e.g. from [`herald::Bus::prepare`]) in this
    /// transaction; returns the `seq`s it will have if the transaction commits.
    pub async fn publish(&mut self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        let dedupe = self.store.inner.config.dedupe_ms();
        let mut appended = crate::append::append(&mut self.tx, &[batch.as_slice()], dedupe).await?;
        self.last_pos = appended.last_pos.or(self.last_pos);
        Ok(appended.seqs.pop().unwrap_or_default())
    }

    /// Commit the caller's statements and the events together, then wake
    /// subscribers.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(runtime_error)?;
        if let Some(pos) = self.last_pos {
            self.store.inner.signals.raise(pos);
        }
        Ok(())
    }

    /// Roll back: none of it happened.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(runtime_error)
    }

    /// The underlying sqlx transaction, for functions that take one.
    pub fn transaction(&mut self) -> &mut Transaction<'static, Sqlite> {
        &mut self.tx
    }
}

impl Deref for Outbox {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for Outbox {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

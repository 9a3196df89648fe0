//! The outbox: events appended inside the caller's own SQLite transaction.
//!
//! Owns [`Outbox`], a write transaction on the store's file in which the
//! caller runs their own statements and publishes events: the events exist
//! if and only if the transaction commits. On commit the store wakes this
//! process's subscribers at once (no polling delay); other processes notice
//! within their poll interval.
//!
//! For a transaction the caller began on their own pool,
//! [`SqliteStore::publish_in`](crate::SqliteStore::publish_in) appends inside
//! it; subscribers then notice the commit by polling (`HERALD_POLL_INTERVAL`)
//! unless the caller calls [`SqliteStore::wake`](crate::SqliteStore::wake)
//! after committing.
//!
//! Does not own the public methods that open these (`store`: `begin`,
//! `publish_in`, `wake` delegate here) or the append SQL (`log`).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use herald::{Envelope, Result};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::conn::{max_pos, on_handle, runtime_error, Inner};
use crate::log::append;

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
    inner: Arc<Inner>,
    /// The `pos` of the last event this transaction appended.
    last_pos: Option<i64>,
}

/// Begin an [`Outbox`] transaction on the store's outbox pool.
pub(crate) async fn begin(inner: &Arc<Inner>) -> Result<Outbox> {
    let tx = inner.begin().await?;
    Ok(Outbox {
        tx,
        inner: inner.clone(),
        last_pos: None,
    })
}

/// Append `batch` inside the caller's own transaction on the store's file.
pub(crate) async fn publish_in(
    inner: &Inner,
    conn: &mut SqliteConnection,
    batch: Vec<Envelope>,
) -> Result<Vec<u64>> {
    let dedupe = inner.config.dedupe_ms();
    let mut appended = on_handle(conn, |c| append(c, &[batch.as_slice()], dedupe)).await?;
    Ok(appended.seqs.pop().unwrap_or_default())
}

/// Wake this process's subscribers after a commit made outside the store.
pub(crate) async fn wake(inner: &Inner) -> Result<()> {
    let pos = max_pos(inner.readers.clone()).await?;
    inner.signals.raise_outside(pos);
    Ok(())
}

impl Outbox {
    /// Append `batch` (e.g. from [`herald::Bus::prepare`]) in this
    /// transaction; returns the `seq`s it will have if the transaction commits.
    pub async fn publish(&mut self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        let dedupe = self.inner.config.dedupe_ms();
        let mut appended =
            on_handle(&mut self.tx, |c| append(c, &[batch.as_slice()], dedupe)).await?;
        self.last_pos = appended.last_pos.or(self.last_pos);
        Ok(appended.seqs.pop().unwrap_or_default())
    }

    /// Commit the caller's statements and the events together, then wake
    /// subscribers.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(runtime_error)?;
        if let Some(pos) = self.last_pos {
            self.inner.signals.raise_outside(pos);
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

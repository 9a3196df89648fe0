//! The outbox: events written as rows of the `outbox` table, in the
//! caller's own transaction (`PgStore::publish_in`) or in one of the
//! store's (`log::append`, which then waits for the sequencer's receipts).
//! A row becomes an event with a `seq` when the sequencer (`sequencer.rs`)
//! moves it into `events`; a deferred trigger's NOTIFY at commit wakes an
//! idle sequencer (see `schema.rs`).
//!
//! Owns the outbox insert and the closed-store check in front of a
//! caller's transaction. Waiting for receipts is `log`'s; the public
//! methods are `store`'s.

use std::sync::atomic::Ordering;

use herald::{Envelope, Result};
use sqlx::PgConnection;

use crate::conn::{closed, runtime_error, Inner};

/// Append `batch` inside the caller's transaction on `conn`
/// (`PgStore::publish_in`): the events exist if and only if that
/// transaction commits.
pub(crate) async fn publish_in(
    inner: &Inner,
    conn: &mut PgConnection,
    batch: Vec<Envelope>,
) -> Result<()> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(closed());
    }
    insert_outbox(inner, conn, &batch).await
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

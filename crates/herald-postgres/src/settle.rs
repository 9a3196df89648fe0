//! Settling group deliveries: the settlement writer and the SQL of a
//! settlement.
//!
//! Owns the settlement writer task ([`write`]), and what a settlement does to
//! a delivery row: an ack settles it, a nack or defer makes it wait for
//! another attempt, a term or a last attempt dead-letters it
//! ([`dead_letter`], which claims use too for what their plan dooms). The
//! writer takes the waiting settlements of every member of the store — up
//! to `HERALD_SETTLE_BATCH`, waiting `HERALD_SETTLE_WINDOW` for more when
//! one is set — and commits them in one synchronous transaction: the plain
//! acks as one statement, the others one after another, and one NOTIFY for
//! other processes' idle members when any hands an event back or frees a
//! key. Before it touches a delivery's row, a settlement takes the lease
//! lock a claim tries (`lease_lock_key`, in order), so claims skip events
//! being settled instead of waiting for their rows: the two never deadlock.
//! Each settlement is answered once that commit is durable. A batch
//! that fails is retried one settlement per transaction, so one bad
//! settlement cannot fail the others. A settlement that comes after its
//! lease ran out (the event was claimed again) changes nothing.
//!
//! Does not own claims or the member stream (`group`), nor an ack with
//! effects, which `group` commits with its outbox rows in a transaction of
//! its own.

use std::sync::Weak;

use herald::backend::group::{self as rules, Change, LeaseState, Settled};
use herald::{DeadLetter, Envelope, ErrorCode, FailureSource, Outcome, Result};
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::conn::{lost_a_race, runtime_error, Inner, PendingSettlement, RACE_RETRIES};

/// A delivery row's state once its event is settled for the group (also
/// read by `group` and `inspect`).
pub(crate) const SETTLED: i64 = 2;

impl PendingSettlement {
    fn is_ack(&self) -> bool {
        self.settled == Settled::Outcome(Outcome::Ack)
    }

    /// Whether committing it may let another member take an event: an ack
    /// of a keyed event frees its key; any other settlement hands the
    /// event back.
    fn frees(&self) -> bool {
        !self.is_ack() || self.envelope.key().is_some()
    }
}

/// The settlement writer: until the store is gone, commit the waiting
/// settlements together (see the module docs) and answer them.
pub(crate) async fn write(inner: Weak<Inner>, mut pending: mpsc::Receiver<PendingSettlement>) {
    while let Some(first) = pending.recv().await {
        let Some(store) = inner.upgrade() else {
            return;
        };
        let batch = gather(&mut pending, first, &store).await;
        let written = commit_all(&store, &batch).await;
        if written.is_ok() {
            if batch.iter().any(PendingSettlement::frees) {
                store.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            for p in batch {
                let _ = p.done.send(Ok(()));
            }
            continue;
        }
        // One bad settlement must not fail the others: each alone.
        for p in batch {
            let alone = commit_all(&store, std::slice::from_ref(&p)).await;
            if alone.is_ok() && p.frees() {
                store.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            let _ = p.done.send(alone);
        }
    }
}

/// `first` and the settlements waiting behind it, up to
/// `HERALD_SETTLE_BATCH`; with a `HERALD_SETTLE_WINDOW`, also those that
/// arrive within it.
async fn gather(
    pending: &mut mpsc::Receiver<PendingSettlement>,
    first: PendingSettlement,
    inner: &Inner,
) -> Vec<PendingSettlement> {
    let (max, window) = (inner.config.settle_batch(), inner.config.settle_window());
    let deadline = tokio::time::Instant::now() + window;
    let mut batch = vec![first];
    while batch.len() < max {
        match pending.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) if window.is_zero() => break,
            Err(_) => match tokio::time::timeout_at(deadline, pending.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            },
        }
    }
    batch
}

/// Commit `batch` in one transaction, again when it lost a race with a
/// claim (a deadlock, see `group`'s lease).
async fn commit_all(inner: &Inner, batch: &[PendingSettlement]) -> Result<()> {
    let mut tries = 0;
    loop {
        match try_commit_all(inner, batch).await {
            Err(e) if lost_a_race(&e) && tries < RACE_RETRIES => tries += 1,
            done => return done,
        }
    }
}

async fn try_commit_all(inner: &Inner, batch: &[PendingSettlement]) -> Result<()> {
    let (acks, others): (Vec<&PendingSettlement>, Vec<&PendingSettlement>) =
        batch.iter().partition(|p| p.is_ack());
    if others.is_empty() {
        // Only acks: one statement, its own transaction.
        ack_all(inner, &inner.pool, &acks).await?;
        return Ok(());
    }
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    lock_leases(inner, &mut tx, batch).await?;
    // One NOTIFY per transaction is enough: the acks' statement sends its
    // own when it frees a key.
    let mut notified = false;
    if !acks.is_empty() {
        notified = ack_all(inner, &mut *tx, &acks).await?;
    }
    let mut changed = false;
    for p in &others {
        changed |= settle_in(inner, &mut tx, p).await?;
    }
    if changed && !notified {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&inner.groups_channel)
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
    }
    tx.commit().await.map_err(runtime_error)
}

/// The lock a claim tries before it leases event `pos` of `group` in
/// this store: an advisory lock keyed by this string and `pos`.
pub(crate) fn lease_lock_key(inner: &Inner, group: &str) -> String {
    format!("{}{group}", lease_lock_prefix(inner))
}

fn lease_lock_prefix(inner: &Inner) -> String {
    format!("herald.claim.{}.", inner.config.schema_name())
}

/// Take the lease locks of the batch's deliveries, in order, before
/// touching their rows. A claim only tries a lease lock and skips the
/// event when it is held, so it never waits for a row being settled; with
/// both waiting for each other's rows (a claim's insert for the row an ack
/// updates, the ack for one the claim leased) they deadlocked, and the
/// server breaks a deadlock only after `deadlock_timeout` (1 s by
/// default), which stalled every settlement of the store meanwhile.
async fn lock_leases(
    inner: &Inner,
    conn: &mut PgConnection,
    batch: &[PendingSettlement],
) -> Result<()> {
    let groups: Vec<&str> = batch.iter().map(|p| p.group.as_str()).collect();
    let positions: Vec<i64> = batch.iter().map(|p| p.pos).collect();
    sqlx::query(
        "SELECT count(*) FROM (
             SELECT pg_advisory_xact_lock(hashtextextended($1 || grp, pos)) FROM (
                 SELECT DISTINCT grp, pos FROM UNNEST($2::text[], $3::bigint[]) AS u(grp, pos)
                 ORDER BY grp, pos) ordered) locked",
    )
    .bind(lease_lock_prefix(inner))
    .bind(&groups)
    .bind(&positions)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// Settle `acks` in one statement, each only if it is still its member's
/// lease, after taking their lease locks in order (see [`lock_leases`];
/// held already inside a batch's transaction, taken again at no cost),
/// with a NOTIFY when one of them frees a key; whether it sent one.
async fn ack_all<'c>(
    inner: &Inner,
    conn: impl sqlx::PgExecutor<'c>,
    acks: &[&PendingSettlement],
) -> Result<bool> {
    let s = &inner.s;
    let groups: Vec<&str> = acks.iter().map(|a| a.group.as_str()).collect();
    let positions: Vec<i64> = acks.iter().map(|a| a.pos).collect();
    let attempts: Vec<i64> = acks.iter().map(|a| a.envelope.attempt() as i64).collect();
    let owners: Vec<&str> = acks.iter().map(|a| a.owner.as_str()).collect();
    let keyed: Vec<bool> = acks.iter().map(|a| a.envelope.key().is_some()).collect();
    // `locked` is an init plan of the update: the locks come first.
    let (freed, _): (bool, bool) = sqlx::query_as(&format!(
        "WITH locked AS MATERIALIZED (
             SELECT pg_advisory_xact_lock(hashtextextended($8 || grp, pos)) FROM (
                 SELECT DISTINCT grp, pos FROM UNNEST($2::text[], $3::bigint[]) AS u(grp, pos)
                 ORDER BY grp, pos) ordered),
         acked AS (
             UPDATE {s}.deliveries d SET state = $1
             FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bool[])
                  AS a(grp, pos, attempt, owner, keyed)
             WHERE (SELECT count(*) FROM locked) >= 0
               AND d.grp = a.grp AND d.pos = a.pos AND d.state = 0
               AND d.attempt = a.attempt AND d.owner = a.owner
             RETURNING a.keyed),
         freed AS (SELECT coalesce(bool_or(keyed), false) AS freed FROM acked)
         SELECT f.freed, CASE WHEN f.freed THEN pg_notify($7, '') END IS NOT NULL FROM freed f"
    ))
    .bind(SETTLED)
    .bind(&groups)
    .bind(&positions)
    .bind(&attempts)
    .bind(&owners)
    .bind(&keyed)
    .bind(&inner.groups_channel)
    .bind(lease_lock_prefix(inner))
    .fetch_one(conn)
    .await
    .map_err(runtime_error)?;
    Ok(freed)
}

/// A settlement other than an ack, inside the caller's transaction; one
/// that comes after its lease ran out is ignored. Whether it changed the
/// delivery (other processes' idle members are then to be told).
async fn settle_in(inner: &Inner, conn: &mut PgConnection, p: &PendingSettlement) -> Result<bool> {
    let s = &inner.s;
    let attempt = p.envelope.attempt() as i64;
    let current: Option<(i64, i64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT state, attempt, owner FROM {s}.deliveries WHERE grp = $1 AND pos = $2 FOR UPDATE"
    ))
    .bind(&p.group)
    .bind(p.pos)
    .fetch_optional(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if current != Some((0, attempt, Some(p.owner.clone()))) {
        return Ok(false);
    }
    let now = chrono::Utc::now().timestamp_millis();
    match rules::change(&p.settled, attempt, inner.config.deliveries(), now) {
        Change::Settle => {}
        Change::Wait {
            attempt,
            until_ms,
            failed_ms,
        } => {
            sqlx::query(&format!(
                "UPDATE {s}.deliveries SET state = $1, attempt = $2, lease_until_ms = $3,
                 first_failed_ms = coalesce(first_failed_ms, $4) WHERE grp = $5 AND pos = $6"
            ))
            .bind(LeaseState::Waiting.code())
            .bind(attempt)
            .bind(until_ms)
            .bind(failed_ms)
            .bind(&p.group)
            .bind(p.pos)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        }
        Change::DeadLetter { code, reason } => {
            let source = FailureSource::Handler;
            let why = (code, reason);
            dead_letter(inner, &p.group, conn, p.pos, &p.envelope, why, source).await?;
        }
    }
    Ok(true)
}

/// Dead-letter `env` and settle its delivery for `group`, in the caller's
/// transaction, `why` (a code and a reason) and by whom (`source`): both
/// happen or neither, and neither if it is settled already.
pub(crate) async fn dead_letter(
    inner: &Inner,
    group: &str,
    conn: &mut PgConnection,
    pos: i64,
    env: &Envelope,
    (code, reason): (ErrorCode, String),
    source: FailureSource,
) -> Result<()> {
    let s = &inner.s;
    // Settle it first: of two claims dooming the same event, only the
    // one that settles it writes the dead letter.
    let first: Option<Option<i64>> = sqlx::query_scalar(&format!(
        "INSERT INTO {s}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
         VALUES ($1, $2, $3, $4, 0, NULL)
         ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt
         WHERE d.state <> $3
         RETURNING d.first_failed_ms"
    ))
    .bind(group)
    .bind(pos)
    .bind(SETTLED)
    .bind(env.attempt() as i64)
    .fetch_optional(&mut *conn)
    .await
    .map_err(runtime_error)?;
    let Some(first) = first else {
        return Ok(());
    };
    let letter = DeadLetter::new(env.clone(), source, code, reason)
        .with_group(group.to_owned())
        .with_first_failure(first.and_then(chrono::DateTime::from_timestamp_millis));
    crate::dead_letters::insert(s, conn, &letter).await?;
    Ok(())
}

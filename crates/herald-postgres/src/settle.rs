//! Settling group deliveries: the settlement writer and the SQL of a
//! settlement.
//!
//! Owns the settlement writer task ([`write`]), and what a settlement does to
//! a delivery row: an ack settles it (and leases the member the next event
//! of the key's run it holds, [`Next`]), a nack or defer makes it wait for
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
//! lease ran out (the event was claimed again) changes nothing; an ack
//! that does is answered with `lease_lost` (`UNAVAILABLE`), since its
//! event is delivered again: an `Ok` ack means it never is.
//!
//! Does not own claims or the member stream (`group`), nor an ack with
//! effects, which `group` commits with its outbox rows in a transaction of
//! its own.

use std::collections::HashMap;
use std::sync::Weak;

use herald::backend::group::{self as rules, Change, LeaseState, Next, Settled};
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
    /// of an ordered event frees its key (or topic); any other settlement
    /// hands the event back.
    fn frees(&self) -> bool {
        !self.is_ack() || self.ordered
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
        if let Ok(stale) = written {
            if batch.iter().any(PendingSettlement::frees) {
                store.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            for (i, p) in batch.into_iter().enumerate() {
                let _ = p.done.send(answer(stale.contains(&i)));
            }
            continue;
        }
        // One bad settlement must not fail the others: each alone.
        for p in batch {
            let alone = commit_all(&store, std::slice::from_ref(&p)).await;
            if alone.is_ok() && p.frees() {
                store.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            let _ = p
                .done
                .send(alone.and_then(|stale| answer(!stale.is_empty())));
        }
    }
}

/// A settlement's answer: `Ok`, or for an ack that came after its lease
/// ran out and the event was claimed again (it changed nothing), the error
/// that says the event is delivered again.
fn answer(stale: bool) -> Result<()> {
    match stale {
        true => Err(rules::lease_lost()),
        false => Ok(()),
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
/// claim (a deadlock, see `group`'s lease); the indices of the acks that
/// came after their lease ran out (they changed nothing).
async fn commit_all(inner: &Inner, batch: &[PendingSettlement]) -> Result<Vec<usize>> {
    let mut tries = 0;
    loop {
        match try_commit_all(inner, batch).await {
            Err(e) if lost_a_race(&e) && tries < RACE_RETRIES => tries += 1,
            done => return done,
        }
    }
}

async fn try_commit_all(inner: &Inner, batch: &[PendingSettlement]) -> Result<Vec<usize>> {
    let (acks, others): (Vec<_>, Vec<_>) = batch.iter().enumerate().partition(|(_, p)| p.is_ack());
    let (ack_at, acks): (Vec<usize>, Vec<&PendingSettlement>) = acks.into_iter().unzip();
    if others.is_empty() {
        // Only acks: one statement, its own transaction.
        let (_, stale) = ack_all(inner, &inner.pool, &acks).await?;
        return Ok(stale.into_iter().map(|i| ack_at[i]).collect());
    }
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    lock_leases(inner, &mut tx, batch).await?;
    // One NOTIFY per transaction is enough: the acks' statement sends its
    // own when it frees a key.
    let (mut notified, mut stale) = (false, Vec::new());
    if !acks.is_empty() {
        let (freed, stale_acks) = ack_all(inner, &mut *tx, &acks).await?;
        notified = freed;
        stale = stale_acks.into_iter().map(|i| ack_at[i]).collect();
    }
    let mut changed = false;
    for (_, p) in &others {
        changed |= settle_in(inner, &mut tx, p).await?;
    }
    if changed && !notified {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&inner.groups_channel)
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
    }
    tx.commit().await.map_err(runtime_error)?;
    Ok(stale)
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
/// with a NOTIFY when one of them frees a key; whether it sent one, and
/// the indices in `acks` of those that were no longer their member's
/// lease (the event was claimed again).
///
/// An ack with a [`Next`] leases that event to its member when the ack
/// applies (`moved`). Acks arrive in the order they were queued, so the
/// ack of a key's next event may be in the same batch as the ack that
/// leases it: such a chain is applied from its first ack (`acked`), the
/// later ones settled with it (`followed`) and only the last one's next
/// leased.
async fn ack_all<'c>(
    inner: &Inner,
    conn: impl sqlx::PgExecutor<'c>,
    acks: &[&PendingSettlement],
) -> Result<(bool, Vec<usize>)> {
    let s = &inner.s;
    let chains = Chains::of(acks);
    let roots = &chains.roots;
    let groups: Vec<&str> = roots.iter().map(|a| a.group.as_str()).collect();
    let positions: Vec<i64> = roots.iter().map(|a| a.pos).collect();
    let attempts: Vec<i64> = roots.iter().map(|a| a.envelope.attempt() as i64).collect();
    let owners: Vec<&str> = roots.iter().map(|a| a.owner.as_str()).collect();
    let keyed: Vec<bool> = roots.iter().map(|a| a.ordered).collect();
    let (f_root, f_pos, f_attempt): (Vec<usize>, Vec<i64>, Vec<i64>) = chains
        .followers
        .iter()
        .map(|(root, a)| (*root, a.pos, a.envelope.attempt() as i64))
        .collect();
    let f_root: Vec<i64> = f_root.into_iter().map(|r| r as i64).collect();
    let (m_root, m_pos, m_attempt, m_until): (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) = chains
        .moves
        .iter()
        .map(|(root, n)| (*root as i64, n.pos, n.attempt, n.until_ms))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    // `locked` is an init plan of the update: the locks come first.
    let (freed, _, applied): (bool, bool, Vec<i64>) = sqlx::query_as(&format!(
        "WITH locked AS MATERIALIZED (
             SELECT pg_advisory_xact_lock(hashtextextended($8 || grp, pos)) FROM (
                 SELECT DISTINCT grp, pos FROM UNNEST($2::text[], $3::bigint[]) AS u(grp, pos)
                 ORDER BY grp, pos) ordered),
         roots AS (
             SELECT * FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bool[])
                 WITH ORDINALITY AS a(grp, pos, attempt, owner, keyed, i)),
         acked AS (
             UPDATE {s}.deliveries d SET state = $1
             FROM roots a
             WHERE (SELECT count(*) FROM locked) >= 0
               AND d.grp = a.grp AND d.pos = a.pos AND d.state = 0
               AND d.attempt = a.attempt AND d.owner = a.owner
             RETURNING a.i, a.grp, a.owner, a.keyed),
         followed AS (
             INSERT INTO {s}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
             SELECT a.grp, f.pos, $1, f.attempt, 0, a.owner
             FROM UNNEST($9::bigint[], $10::bigint[], $11::bigint[]) AS f(root, pos, attempt)
             JOIN acked a ON a.i = f.root + 1
             ON CONFLICT (grp, pos) DO UPDATE SET state = $1, attempt = excluded.attempt
             WHERE d.state <> $1 AND d.attempt = excluded.attempt - 1
             RETURNING 1),
         moved AS (
             INSERT INTO {s}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
             SELECT a.grp, m.pos, 0, m.attempt, m.until_ms, a.owner
             FROM UNNEST($12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[])
                  AS m(root, pos, attempt, until_ms)
             JOIN acked a ON a.i = m.root + 1
             {take}
             RETURNING 1),
         freed AS (SELECT coalesce(bool_or(keyed), false) AS freed FROM acked)
         SELECT f.freed, CASE WHEN f.freed THEN pg_notify($7, '') END IS NOT NULL,
                (SELECT coalesce(array_agg(i), '{{}}') FROM acked)
         FROM freed f, (SELECT count(*) FROM followed) fc, (SELECT count(*) FROM moved) mc",
        take = take_lease("$1", "$16")
    ))
    .bind(SETTLED)
    .bind(&groups)
    .bind(&positions)
    .bind(&attempts)
    .bind(&owners)
    .bind(&keyed)
    .bind(&inner.groups_channel)
    .bind(lease_lock_prefix(inner))
    .bind(&f_root)
    .bind(&f_pos)
    .bind(&f_attempt)
    .bind(&m_root)
    .bind(&m_pos)
    .bind(&m_attempt)
    .bind(&m_until)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(runtime_error)?;
    // A chain stands or falls with its first ack (`i` counts from 1).
    let root_applied = |root: usize| applied.contains(&(root as i64 + 1));
    let stale = acks
        .iter()
        .enumerate()
        .filter(|(_, a)| !chains.applied(a, root_applied))
        .map(|(i, _)| i)
        .collect();
    Ok((freed, stale))
}

/// The end of an insert of lease rows into `deliveries AS d`: a row that
/// exists is leased only if it is not settled (`settled`: the parameter
/// holding [`SETTLED`]), is still at the attempt before, and its lease ran
/// out by `now` (a parameter); a lease that ran out counts as the first
/// failure if none is recorded.
pub(crate) fn take_lease(settled: &str, now: &str) -> String {
    format!(
        "ON CONFLICT (grp, pos) DO UPDATE SET state = 0, attempt = excluded.attempt,
             lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
             first_failed_ms = coalesce(d.first_failed_ms,
                 CASE WHEN d.state = 0 THEN d.lease_until_ms END)
         WHERE d.state <> {settled} AND d.attempt = excluded.attempt - 1
           AND d.lease_until_ms <= {now}"
    )
}

/// Lease `next` to `owner` (whose ack of the event before it applied in
/// this transaction), as a claim would: only if it is not settled, still at
/// the attempt before, and no one holds it.
pub(crate) async fn lease_next(
    inner: &Inner,
    conn: &mut PgConnection,
    group: &str,
    owner: &str,
    next: Next,
) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
         VALUES ($1, $2, 0, $3, $4, $5) {}",
        inner.s,
        take_lease("$6", "$7")
    ))
    .bind(group)
    .bind(next.pos)
    .bind(next.attempt)
    .bind(next.until_ms)
    .bind(owner)
    .bind(SETTLED)
    .bind(chrono::Utc::now().timestamp_millis())
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// A batch's acks as chains: an ack whose event an earlier ack of the
/// batch leases (its [`Next`]) follows that one.
struct Chains<'a> {
    /// The first ack of each chain.
    roots: Vec<&'a PendingSettlement>,
    /// The later acks, with their chain's index in `roots`.
    followers: Vec<(usize, &'a PendingSettlement)>,
    /// The event each chain's last ack leases, with the chain's index.
    moves: Vec<(usize, Next)>,
}

impl<'a> Chains<'a> {
    /// Whether `ack` applied, given whether each chain's first ack did.
    fn applied(&self, ack: &PendingSettlement, root_applied: impl Fn(usize) -> bool) -> bool {
        let is = |p: &PendingSettlement| std::ptr::eq(p, ack);
        match self.roots.iter().position(|r| is(r)) {
            Some(root) => root_applied(root),
            None => self
                .followers
                .iter()
                .find(|(_, f)| is(f))
                .is_some_and(|(root, _)| root_applied(*root)),
        }
    }

    fn of(acks: &[&'a PendingSettlement]) -> Chains<'a> {
        let mut chains = Chains {
            roots: Vec::new(),
            followers: Vec::new(),
            moves: Vec::new(),
        };
        // The chain an event's ack joins: (group, owner, pos, attempt) of
        // a Next an earlier ack leases, with that chain.
        let mut awaited: HashMap<(&str, &str, i64, i64), usize> = HashMap::new();
        let mut last_next: HashMap<usize, Next> = HashMap::new();
        for a in acks {
            let attempt = a.envelope.attempt() as i64;
            let chain = match awaited.remove(&(a.group.as_str(), a.owner.as_str(), a.pos, attempt))
            {
                Some(chain) => {
                    chains.followers.push((chain, a));
                    last_next.remove(&chain);
                    chain
                }
                None => {
                    chains.roots.push(a);
                    chains.roots.len() - 1
                }
            };
            if let Some(next) = a.next {
                awaited.insert(
                    (a.group.as_str(), a.owner.as_str(), next.pos, next.attempt),
                    chain,
                );
                last_next.insert(chain, next);
            }
        }
        chains.moves = last_next.into_iter().collect();
        chains
    }
}

/// A settlement other than an ack, inside the caller's transaction; one
/// that comes after its lease ran out is ignored (its event is delivered
/// again, which is what a nack asks for). Whether it changed the delivery
/// (other processes' idle members are then to be told).
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
    let at = (p.group.as_str(), p.envelope.topic().as_str());
    match rules::change(&p.settled, attempt, p.max_deliver, now, at) {
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
        Change::DeadLetter {
            code,
            reason,
            source,
        } => {
            let why = (code, reason);
            dead_letter(inner, &p.group, conn, p.pos, &p.envelope, why, source).await?;
        }
    }
    Ok(true)
}

/// Dead-letter `env` (unless the store discards dead letters) and settle
/// its delivery for `group`, in the caller's transaction, `why` (a code
/// and a reason) and by whom (`source`): both happen or neither, and
/// neither if it is settled already.
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
    if !inner.discards.discard(&letter) {
        crate::dead_letters::insert(s, conn, &letter).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald::backend::group::{Next, Settled};
    use herald::{Bus, Message, Outcome};

    use super::Chains;
    use crate::conn::PendingSettlement;

    fn ack(owner: &str, pos: i64, attempt: u32, next: Option<(i64, i64)>) -> PendingSettlement {
        let envelope = Bus::memory()
            .prepare([Message::json("jobs", &pos).unwrap().key("k")])
            .unwrap()
            .remove(0)
            .with_attempt(attempt);
        PendingSettlement {
            group: "g".into(),
            owner: owner.into(),
            pos,
            ordered: true,
            envelope: Arc::new(envelope),
            settled: Settled::Outcome(Outcome::Ack),
            max_deliver: 5,
            next: next.map(|(pos, attempt)| Next {
                pos,
                attempt,
                until_ms: 99,
            }),
            done: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn an_ack_of_the_event_an_earlier_ack_leases_follows_it() {
        let batch = [
            ack("m", 1, 1, Some((3, 1))),
            ack("m", 2, 1, Some((4, 1))),
            ack("m", 3, 1, Some((5, 1))),
            // Another member, or another attempt, is not the event leased.
            ack("n", 4, 1, None),
            ack("m", 5, 2, None),
        ];
        let refs: Vec<&PendingSettlement> = batch.iter().collect();
        let chains = Chains::of(&refs);
        let roots: Vec<i64> = chains.roots.iter().map(|a| a.pos).collect();
        assert_eq!(roots, vec![1, 2, 4, 5]);
        let followers: Vec<(usize, i64)> =
            chains.followers.iter().map(|(r, a)| (*r, a.pos)).collect();
        assert_eq!(followers, vec![(0, 3)], "3 follows 1");
        let mut moves: Vec<(usize, i64)> = chains.moves.iter().map(|(r, n)| (*r, n.pos)).collect();
        moves.sort_unstable();
        // Chain 1-3 leases 5 (3's next); chain 2 leases 4.
        assert_eq!(moves, vec![(0, 5), (1, 4)]);
    }
}

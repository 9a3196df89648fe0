//! Durable consumer groups on PostgreSQL: members in any number of
//! processes share one group.
//!
//! Owns the `groups`, `deliveries` and `members` tables and the SQL of claims and
//! settlements; the rules (what is claimable, what a settlement changes,
//! the member stream) are `herald::backend::group`'s, reading delivery
//! states and the group list (offsets and lag) is `inspect`'s, where a new
//! group starts in the log `log`'s. Claims of one group run in parallel,
//! across processes, and lock no group-wide row: each reads the unsettled
//! events, plans as if alone, then leases its share of the plan's events
//! in order, skipping any another claim is leasing at that moment (a
//! transaction-scoped advisory lock per schema, group and event, tried,
//! never waited for, and only for an event its row shows still free),
//! and only where the delivery row is still as the plan read it (the same
//! attempt, not settled, no live lease). Per-key order holds because a plan
//! only ever offers the first unsettled event of a key, and that row's
//! check fails once another claim leased or settled it. The cursor moves
//! only when no other claim is moving it; the delivery rows below it are
//! kept until a sweep that waits for every running claim (a claim holds the
//! group's row `FOR KEY SHARE`, the sweep takes it `FOR UPDATE`), so a
//! claim that planned on an older cursor still finds the rows that tell it
//! an event is settled; the sweep runs in a task of its own, after the
//! claim answered, and gives up after `SWEEP_WAIT` (claims that keep
//! coming may hold the row without a gap). A claim leases heads only; the
//! runs after them it returns unleased, and an ack leases each run's next
//! event (`settle`). A claim commits with `synchronous_commit = off`: a lease lost
//! to a server crash only means the event is delivered again, and the
//! member's next synchronous commit (its ack) flushes it anyway. Acks,
//! dead letters and a handler's effects commit synchronously, so they are
//! on disk before `Ok`; settlements without effects of every member of the
//! store go to one settlement writer (`settle`), which commits those
//! waiting in one transaction (group commit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::backend::group::{
    self as rules, Candidate, CandidateRow, Claimed, Plan, Position, Settled,
};
use herald::backend::{member, BoxFuture};
use herald::{Envelope, Error, Outcome, Result, SubscribeSpec, Subscription};
use sqlx::PgConnection;

use crate::conn::{
    closed, decode_stored, lost_a_race, runtime_error, Inner, PendingSettlement, RACE_RETRIES,
};
use crate::log::start_cursor;
use crate::outbox::insert_outbox;
use crate::settle::{self, SETTLED};

/// Unsettled events a claim examines first: four times its room, at least
/// [`WINDOW`] (the keys' runs are found in it); it looks further (up to
/// [`WINDOW_MAX`]) only when those hold nothing it may take.
const WINDOW: i64 = 128;
const WINDOW_MAX: i64 = 2048;
/// How far an idle claim lets the cursor lag before moving it.
const CURSOR_STEP: i64 = 256;
/// How far the cursor moves between sweeps of the delivery rows below it.
const SWEEP_STEP: i64 = 1024;
/// How long a sweep waits for the claims running to end.
const SWEEP_WAIT: Duration = Duration::from_secs(1);

/// Open a member of `spec.group`: it shares this store handle's member of
/// the group (see `herald::backend::member`).
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let group = spec.group.clone().expect("a group subscription");
    let member = || -> Arc<dyn member::GroupMember> {
        Arc::new(Member {
            inner: inner.clone(),
            lock_key: settle::lease_lock_key(inner, &group),
            group: group.clone(),
            id: uuid::Uuid::now_v7().to_string(),
            topic: match herald::backend::log_tail::literal_topics(&spec).as_deref() {
                Some([one]) => Some(one.clone()),
                _ => None,
            },
            spec: spec.clone(),
            sweeping: Arc::new(AtomicBool::new(false)),
        })
    };
    inner.claimers.subscribe(&spec, member).await
}

/// This store handle's member of a group: its members in this process
/// claim through it (one row in the group's `members`).
struct Member {
    inner: Arc<Inner>,
    group: String,
    /// What the advisory locks of the group's leases are keyed by, with
    /// each event's `pos`: the schema and the group, so stores in other
    /// schemas of the database never skip each other's events.
    lock_key: String,
    id: String,
    spec: SubscribeSpec,
    /// The topic, when the group follows one literal topic: its events are
    /// read through the `(topic, pos)` index. Otherwise claims read every
    /// topic's events in `pos` order and skip the unwanted (a filter on
    /// several topics would make the planner sort them all).
    topic: Option<String>,
    /// A sweep of this member's runs (one at a time).
    sweeping: Arc<AtomicBool>,
}

impl member::GroupMember for Member {
    fn claim(&self, max: usize) -> BoxFuture<'_, Result<Claimed>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(closed());
            }
            let mut tries = 0;
            let (claimed, sweep_due) = loop {
                let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
                match self.claim_in(&mut tx, max).await {
                    Ok(done) => {
                        tx.commit().await.map_err(runtime_error)?;
                        break done;
                    }
                    // A deadlock lost (see `lease`).
                    Err(e) if lost_a_race(&e) && tries < RACE_RETRIES => tries += 1,
                    Err(e) => return Err(e),
                }
            };
            // The claim has committed: its events go to the member now, and
            // a failed sweep must not lose them (the next one sweeps the
            // same rows).
            if sweep_due && !self.sweeping.swap(true, Ordering::AcqRel) {
                let (inner, group) = (self.inner.clone(), self.group.clone());
                let sweeping = self.sweeping.clone();
                tokio::spawn(async move {
                    if let Err(e) = sweep(&inner, &group).await {
                        tracing::debug!(group, error = %e, "sweeping settled delivery rows failed");
                    }
                    sweeping.store(false, Ordering::Release);
                });
            }
            Ok(claimed)
        })
    }

    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        settled: Settled,
        effects: Vec<Envelope>,
        next: Option<rules::Next>,
    ) -> BoxFuture<'_, Result<member::Settling>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(closed());
            }
            if settled == Settled::Outcome(Outcome::Ack) && !effects.is_empty() {
                // Its own transaction: queued is durable.
                self.ack_with(pos, &envelope, effects, next).await?;
                let durable: member::Settling = Box::pin(async { Ok(()) });
                return Ok(durable);
            }
            let (done, written) = tokio::sync::oneshot::channel();
            let pending = PendingSettlement {
                group: self.group.clone(),
                owner: self.id.clone(),
                pos,
                ordered: self.spec.orders(&envelope),
                envelope,
                settled,
                max_deliver: self.spec.max_deliver_or(self.inner.config.deliveries()),
                next,
                done,
            };
            self.inner
                .settlements
                .send(pending)
                .await
                .map_err(|_| closed())?;
            // The settlement writer commits in the order it receives.
            let durable: member::Settling =
                Box::pin(async move { written.await.map_err(|_| closed())? });
            Ok(durable)
        })
    }

    /// New events, settlements in this process or (by NOTIFY) others that
    /// hand an event back, or `IDLE_MAX`.
    fn changes(&self) -> BoxFuture<'static, ()> {
        member::changes(
            self.inner.committed.subscribe(),
            self.inner.groups.subscribe(),
        )
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn ack_wait(&self) -> Duration {
        self.spec.ack_wait
    }

    fn pruned(&self) -> u64 {
        self.inner.pruned.load(Ordering::Acquire)
    }
}

/// Delete `group`'s delivery rows at or below its cursor, in a transaction
/// of its own that waits until no claim is running (`FOR UPDATE` on the
/// group's row, which claims hold `FOR KEY SHARE`): a claim that read an
/// event as never delivered may still lease it, and its row is what tells
/// that claim the event is settled. Claims that keep coming may hold the
/// row without a gap: the sweep gives up after [`SWEEP_WAIT`] and the
/// next one sweeps the same rows.
async fn sweep(inner: &Inner, group: &str) -> Result<()> {
    let s = &inner.s;
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    sqlx::query(&format!(
        "SELECT set_config('lock_timeout', '{}ms', true)",
        SWEEP_WAIT.as_millis()
    ))
    .execute(&mut *tx)
    .await
    .map_err(runtime_error)?;
    sqlx::query(&format!(
        "WITH g AS (SELECT cursor FROM {s}.groups WHERE name = $1 FOR UPDATE)
         DELETE FROM {s}.deliveries WHERE grp = $1 AND pos <= (SELECT cursor FROM g)"
    ))
    .bind(group)
    .execute(&mut *tx)
    .await
    .map_err(runtime_error)?;
    tx.commit().await.map_err(runtime_error)?;
    Ok(())
}

impl Member {
    /// The claim, inside its transaction; and whether it moved the cursor
    /// past a multiple of [`SWEEP_STEP`] (time to [`sweep`](Self::sweep)).
    async fn claim_in(&self, conn: &mut PgConnection, max: usize) -> Result<(Claimed, bool)> {
        let now = chrono::Utc::now().timestamp_millis();
        self.seen(conn, max == 0, now).await?;
        let (mut position, last, members) = self.register(conn, max > 0, now).await?;
        if max == 0 {
            return Ok((Claimed::default(), false));
        }
        let max_deliver = self.spec.max_deliver_or(self.inner.config.deliveries());
        let mut sweep = false;
        let mut limit = (max as i64).saturating_mul(4).clamp(WINDOW, WINDOW_MAX);
        let plan = loop {
            let rows = self.window(conn, position.cursor, last, limit).await?;
            let full = rows.len() as i64 == limit;
            let complete_to = match rows.last() {
                Some(row) if full => row.0,
                _ => last,
            };
            let rows: Vec<Candidate> = rows.into_iter().map(Candidate::from).collect();
            let plan = rules::plan(
                &self.spec,
                &position,
                &rows,
                complete_to,
                // Every head, of which the claim leases its share (see
                // `lease`).
                rules::Share {
                    max,
                    members,
                    all_heads: true,
                },
                max_deliver,
                now,
            );
            // A window of only events the group does not follow: read on.
            if plan.claims.is_empty() && plan.cursor == complete_to && complete_to < last {
                sweep |= self.apply(conn, &position, &plan).await?;
                position.cursor = plan.cursor;
                continue;
            }
            if plan.claims.is_empty() && full && limit < WINDOW_MAX {
                limit = WINDOW_MAX;
                continue;
            }
            break (plan, complete_to < last);
        };
        let (plan, beyond) = plan;
        let share = plan.claims.len().div_ceil(members);
        let events = self.lease(conn, &plan, share, now).await?;
        // The plan's events past this claim's share are left to the other
        // members: claim again for them. Those it passed over because
        // another claim is leasing or has leased them are not.
        let left = share < plan.claims.len();
        // An idle claim leaves a short cursor move for the next one that
        // leases (it costs a round trip; settled events are skipped anyway).
        let idle = events.is_empty() && plan.dead.is_empty();
        if !idle || plan.cursor - position.cursor >= CURSOR_STEP {
            sweep |= self.apply(conn, &position, &plan).await?;
        }
        // A window read to its end holding nothing this claim could take
        // is not read again at once: the member waits for a change.
        let claimed = Claimed {
            more: plan.more || left || (beyond && !events.is_empty()),
            events,
        };
        Ok((claimed, sweep))
    }

    /// Up to `limit` events after `cursor` (and after the group's cursor as
    /// this statement reads it, which another claim may have moved since)
    /// through `last` that are not settled for the group, with the group's
    /// delivery rows.
    async fn window(
        &self,
        conn: &mut PgConnection,
        cursor: i64,
        last: i64,
        limit: i64,
    ) -> Result<Vec<CandidateRow>> {
        let s = &self.inner.s;
        let topic_filter = if self.topic.is_some() {
            "AND e.topic = $6"
        } else {
            ""
        };
        let sql = format!(
            "SELECT e.pos, e.topic, e.seq, e.key, e.kind, e.priority, e.created_ms, e.expires_ms,
                    d.state, d.attempt, d.lease_until_ms
             FROM {s}.events e LEFT JOIN {s}.deliveries d ON d.grp = $1 AND d.pos = e.pos
             WHERE e.pos > $2 AND e.pos <= $3 AND (d.state IS NULL OR d.state <> $4) {topic_filter}
               AND e.pos > (SELECT cursor FROM {s}.groups WHERE name = $1)
             ORDER BY e.pos LIMIT $5"
        );
        let mut query = sqlx::query_as::<_, CandidateRow>(&sql)
            .bind(&self.group)
            .bind(cursor)
            .bind(last)
            .bind(SETTLED)
            .bind(limit);
        if let Some(topic) = &self.topic {
            query = query.bind(topic);
        }
        query.fetch_all(&mut *conn).await.map_err(runtime_error)
    }

    /// Lease to this member the first `share` of the plan's events that
    /// no other claim is leasing now; their envelopes. An event whose
    /// delivery row changed since the window was read (leased or settled by
    /// another claim, a late ack of an expired lease) is left alone; most
    /// such are passed over before the insert, so it seldom waits for
    /// another transaction's row, and never for a settlement's: settlements
    /// hold the lease lock this claim tries (`settle`). A deadlock that
    /// remains is broken by the server and the claim runs again.
    async fn lease(
        &self,
        conn: &mut PgConnection,
        plan: &Plan,
        share: usize,
        now: i64,
    ) -> Result<Vec<(i64, Envelope)>> {
        if plan.claims.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let ack_wait = self.spec.ack_wait.as_millis().min(i64::MAX as u128) as i64;
        let (positions, attempts): (Vec<i64>, Vec<i64>) = plan.claims.iter().copied().unzip();
        let (tails, tail_attempts, tail_heads): (Vec<i64>, Vec<i64>, Vec<i64>) = plan
            .tails
            .iter()
            .map(|t| (t.pos, t.attempt, t.head))
            .collect();
        let leased: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(&format!(
            // The scan offers the plan's heads in order and the limit stops
            // it, so no lock is tried past the share.
            // The lock is tried only for an event still free: a CASE
            // fixes that order (the planner may run the cheaper lock
            // function first), so a claim never holds the lock of an event
            // another member leased, whose settlement would wait for it.
            // A run's later events are returned with their head, not
            // leased: the ack of each one's predecessor leases it.
            "WITH picked AS (
                 SELECT p, a FROM UNNEST($2::bigint[], $3::bigint[]) AS u(p, a)
                 WHERE CASE WHEN NOT EXISTS (
                         SELECT 1 FROM {s}.deliveries d WHERE d.grp = $1 AND d.pos = p
                           AND (d.state = $6 OR d.attempt <> a - 1 OR d.lease_until_ms > $8))
                   THEN pg_try_advisory_xact_lock(hashtextextended($9, p)) ELSE false END
                 LIMIT $7),
             leased AS (
                 INSERT INTO {s}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
                 SELECT $1, p, 0, a, $4, $5 FROM picked
                 {take}
                 RETURNING d.pos, d.attempt),
             tails AS (
                 SELECT t.p AS pos, t.a AS attempt
                 FROM UNNEST($10::bigint[], $11::bigint[], $12::bigint[]) AS t(p, a, h)
                 WHERE t.h IN (SELECT pos FROM leased))
             SELECT l.pos, l.attempt, e.envelope
             FROM (SELECT * FROM leased UNION ALL SELECT * FROM tails) l
             JOIN {s}.events e ON e.pos = l.pos",
            take = settle::take_lease("$6", "$8")
        ))
        .bind(&self.group)
        .bind(&positions)
        .bind(&attempts)
        .bind(now.saturating_add(ack_wait))
        .bind(&self.id)
        .bind(SETTLED)
        .bind(share as i64)
        .bind(now)
        .bind(&self.lock_key)
        .bind(&tails)
        .bind(&tail_attempts)
        .bind(&tail_heads)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let mut leased: HashMap<i64, (i64, Vec<u8>)> = leased
            .into_iter()
            .map(|(pos, attempt, env)| (pos, (attempt, env)))
            .collect();
        // In the plan's order.
        positions
            .into_iter()
            .chain(tails)
            .filter_map(|pos| leased.remove(&pos).map(|l| (pos, l)))
            .map(|(pos, (attempt, bytes))| {
                let attempt = attempt.clamp(1, u32::MAX as i64) as u32;
                Ok((pos, decode_stored(&bytes)?.with_attempt(attempt)))
            })
            .collect()
    }

    /// The stored envelopes at `positions`.
    async fn envelopes(
        &self,
        conn: &mut PgConnection,
        positions: &[i64],
    ) -> Result<HashMap<i64, Envelope>> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
            "SELECT pos, envelope FROM {}.events WHERE pos = ANY($1)",
            self.inner.s
        ))
        .bind(positions)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        rows.into_iter()
            .map(|(pos, bytes)| Ok((pos, decode_stored(&bytes)?)))
            .collect()
    }

    /// Dead-letter what `plan` dooms and move the group's cursor; whether
    /// the move passed a multiple of [`SWEEP_STEP`].
    async fn apply(
        &self,
        conn: &mut PgConnection,
        position: &Position,
        plan: &Plan,
    ) -> Result<bool> {
        let s = &self.inner.s;
        if !plan.dead.is_empty() {
            let positions: Vec<i64> = plan.dead.iter().map(|d| d.pos).collect();
            let mut envelopes = self.envelopes(conn, &positions).await?;
            for d in &plan.dead {
                let Some(env) = envelopes.remove(&d.pos) else {
                    continue;
                };
                let env = env.with_attempt(d.attempt.clamp(1, u32::MAX as i64) as u32);
                let why = (d.code, d.reason.clone());
                let (inner, group) = (&self.inner, &self.group);
                settle::dead_letter(inner, group, conn, d.pos, &env, why, d.source).await?;
            }
        }
        if plan.cursor <= position.cursor {
            return Ok(false);
        }
        // Another claim moving the cursor now holds the row: leave the move
        // to a later claim rather than wait (settled events above the
        // cursor are only skipped). Claims hold the row `FOR KEY SHARE`,
        // which this lock does not wait for.
        let moved: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE {s}.groups SET cursor = $1
             WHERE name = (SELECT name FROM {s}.groups WHERE name = $2
                           FOR NO KEY UPDATE SKIP LOCKED)
               AND cursor < $1
             RETURNING cursor"
        ))
        .bind(plan.cursor)
        .bind(&self.group)
        .fetch_optional(&mut *conn)
        .await
        .map_err(runtime_error)?;
        Ok(moved.is_some_and(|c| c / SWEEP_STEP > position.cursor / SWEEP_STEP))
    }

    /// Record that this member claims now; a member `joining` also clears
    /// out the group's members not seen for [`rules::MEMBER_TTL`].
    async fn seen(&self, conn: &mut PgConnection, joining: bool, now: i64) -> Result<()> {
        let s = &self.inner.s;
        let ttl = rules::MEMBER_TTL.as_millis() as i64;
        if joining {
            sqlx::query(&format!(
                "DELETE FROM {s}.members WHERE grp = $1 AND seen_ms <= $2"
            ))
            .bind(&self.group)
            .bind(now - ttl)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        }
        sqlx::query(&format!(
            "INSERT INTO {s}.members (grp, id, seen_ms) VALUES ($1, $2, $3)
             ON CONFLICT (grp, id) DO UPDATE SET seen_ms = excluded.seen_ms"
        ))
        .bind(&self.group)
        .bind(&self.id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
        Ok(())
    }

    /// Register the group on first use and check
    /// that a known group follows the same topics; the group's position,
    /// the log's last `pos` and the group's live members. A claim that
    /// `leases` commits asynchronously (see the module).
    async fn register(
        &self,
        conn: &mut PgConnection,
        leases: bool,
        now: i64,
    ) -> Result<(Position, i64, usize)> {
        let s = &self.inner.s;
        let select = format!(
            "SELECT set_config('synchronous_commit', $2, true), patterns, kinds, cursor,
                    start_seq, start_ms, (SELECT coalesce(max(pos), 0) FROM {s}.events),
                    (SELECT count(*) FROM {s}.members WHERE grp = $1 AND seen_ms > $3)
             FROM {s}.groups WHERE name = $1 FOR KEY SHARE"
        );
        type GroupRow = (String, String, i64, i64, Option<i64>, Option<i64>, i64, i64);
        let commit = if leases { "off" } else { "on" };
        let live_since = now - rules::MEMBER_TTL.as_millis() as i64;
        for _ in 0..2 {
            let row: Option<GroupRow> = sqlx::query_as(&select)
                .bind(&self.group)
                .bind(commit)
                .bind(live_since)
                .fetch_optional(&mut *conn)
                .await
                .map_err(runtime_error)?;
            if let Some((_, patterns, kinds, cursor, start_seq, start_ms, last, members)) = row {
                rules::check_member(&self.group, &patterns, kinds, &self.spec)?;
                let position = Position {
                    cursor,
                    start_seq,
                    start_ms,
                };
                return Ok((position, last, members.max(1) as usize));
            }
            // Another process may register it at the same moment: the first
            // wins, and the loop reads its row. A `Latest` group
            // starts after the log's last event; any other just below the
            // first event it may want.
            let start = Position::new(&self.spec.start, 0);
            let latest = matches!(self.spec.start, herald::StartPosition::Latest);
            let cursor = if latest {
                0
            } else {
                start_cursor(conn, &self.inner.s, &self.spec, &start).await?
            };
            sqlx::query(&format!(
                "INSERT INTO {s}.groups (name, patterns, kinds, cursor, start_seq, start_ms)
                 SELECT $1, $2, $3,
                        CASE WHEN $4 THEN (SELECT coalesce(max(pos), 0) FROM {s}.events) ELSE $7 END,
                        $5, $6
                 ON CONFLICT (name) DO NOTHING"
            ))
            .bind(&self.group)
            .bind(rules::patterns_text(&self.spec))
            .bind(rules::kind_bits(&self.spec))
            .bind(latest)
            .bind(start.start_seq)
            .bind(start.start_ms)
            .bind(cursor)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        }
        Err(Error::internal(format!(
            "consumer group {:?} could not be registered",
            self.group
        )))
    }

    /// An ack with a handler's `effects`: a transaction that appends them
    /// to the outbox only if this member's lease still holds (settlements
    /// without effects go to the store's settlement writer, `settle`).
    async fn ack_with(
        &self,
        pos: i64,
        envelope: &Envelope,
        effects: Vec<Envelope>,
        next: Option<rules::Next>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {}.deliveries SET state = $1
             WHERE grp = $2 AND pos = $3 AND state = 0 AND attempt = $4 AND owner = $5",
            self.inner.s
        );
        let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
        let acked = sqlx::query(&sql)
            .bind(SETTLED)
            .bind(&self.group)
            .bind(pos)
            .bind(envelope.attempt() as i64)
            .bind(&self.id)
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
        if acked.rows_affected() == 0 {
            return Err(rules::lease_lost());
        }
        if let Some(next) = next {
            settle::lease_next(&self.inner, &mut tx, &self.group, &self.id, next).await?;
        }
        insert_outbox(&self.inner, &mut tx, &effects).await?;
        tx.commit().await.map_err(runtime_error)?;
        if self.spec.orders(envelope) {
            self.inner.groups.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }
}

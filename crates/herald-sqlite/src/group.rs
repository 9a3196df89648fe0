//! Durable consumer groups: leases in the database, so members in any number
//! of tasks and processes share one group.
//!
//! Owns the `groups` and `deliveries` tables and the member stream. A group
//! has a cursor (every event at or below it, in commit order `pos`, is
//! settled for the group) and, above it, one `deliveries` row per event a
//! member touched: in flight (leased until its ack deadline), waiting (nacked
//! with a delay) or settled. A member *claims* events in a write transaction
//! — SQLite runs one writer at a time, so claims never race — taking, per
//! topic and key, only the first unsettled event, so same-key events go to
//! one member at a time and in order. A lease that ran out is claimable
//! again with `attempt + 1`; after `max_deliver` attempts the event is
//! dead-lettered in the same transaction that settles it. Offsets are
//! committed on ack, so a restarted consumer resumes after its last ack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use herald::delivery::{BoxFuture, Settle};
use herald::subscription::CloseHandle;
use herald::{
    DeadLetter, Delivery, Envelope, Error, ErrorCode, FailureSource, Kind, Outcome, Result,
    StartPosition, SubscribeSpec, Subscription,
};
use sqlx::SqliteConnection;
use tokio::sync::{oneshot, Notify};

use crate::append::append;
use crate::store::{decode_stored, runtime_error, Inner};
use crate::writer::Request;

/// Events examined per claim.
const WINDOW: i64 = 128;
/// Events one claim leases to a member: one, so a member never sits on
/// events another member could be handling (each delivery costs a claim,
/// group-committed with everything else the writer has waiting).
const CLAIM_MAX: usize = 1;
/// Longest an idle member waits before claiming again (leases that ran out
/// are found by claims).
const IDLE_MAX: Duration = Duration::from_millis(250);

/// A topic and key (keyless events of a topic form one flow).
type Flow = (String, Option<String>);
/// patterns, kinds, cursor, start_seq, start_ms
type GroupRow = (String, i64, i64, Option<i64>, Option<i64>);
/// An event's row without its envelope (pos, topic, seq, key, kind,
/// priority, created_ms, expires_ms) and the group's delivery of it, if any
/// (state, attempt, lease_until_ms).
type Meta = (
    i64,
    String,
    i64,
    Option<String>,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

const IN_FLIGHT: i64 = 0;
const WAITING: i64 = 1;
const SETTLED: i64 = 2;

/// A member asks for up to `max` events (0: only register the group).
pub(crate) struct Claim {
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) max: usize,
    pub(crate) spec: SubscribeSpec,
    pub(crate) max_deliver: u32,
}

/// How a member settled the delivery of `pos` at `attempt`.
pub(crate) struct Settlement {
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) pos: i64,
    pub(crate) outcome: Settled,
    pub(crate) max_deliver: u32,
    /// Events to append in the same transaction if this ack applies.
    pub(crate) effects: Vec<Envelope>,
}

pub(crate) enum Settled {
    Outcome(Outcome),
    /// Claimed but never handed to the application (the member closed).
    Released,
}

fn kind_bits(spec: &SubscribeSpec) -> i64 {
    [Kind::Event, Kind::Command, Kind::Response, Kind::Intent]
        .iter()
        .enumerate()
        .map(|(i, k)| (spec.kinds.allows(*k) as i64) << i)
        .sum()
}

fn patterns_text(spec: &SubscribeSpec) -> String {
    let mut p: Vec<&str> = spec.patterns.iter().map(|p| p.as_str()).collect();
    p.sort_unstable();
    p.join(" ")
}

/// Register the group if new (checking a known group follows the same
/// topics), then lease up to `claim.max` events to the member.
pub(crate) async fn claim(
    conn: &mut SqliteConnection,
    claim: &Claim,
) -> Result<Vec<(i64, Envelope)>> {
    let now = chrono::Utc::now().timestamp_millis();
    let (cursor, start_seq, start_ms) = register(conn, claim).await?;
    if claim.max == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<Meta> = sqlx::query_as(
        "SELECT e.pos, e.topic, e.seq, e.key, e.kind, e.priority, e.created_ms, e.expires_ms,
                d.state, d.attempt, d.lease_until_ms
         FROM events e LEFT JOIN deliveries d ON d.grp = ? AND d.pos = e.pos
         WHERE e.pos > ? ORDER BY e.pos LIMIT ?",
    )
    .bind(&claim.group)
    .bind(cursor)
    .bind(WINDOW)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }

    let spec = &claim.spec;
    let mut new_cursor = cursor;
    let mut contiguous = true;
    let mut blocked: std::collections::HashSet<(String, String)> = Default::default();
    // Eligible events per flow (topic + key; keyless events of a topic form
    // one flow), in pos order: (pos, priority, attempt).
    let mut flows: HashMap<Flow, VecDeque<(i64, i64, i64)>> = HashMap::new();
    let mut dead: Vec<(i64, i64, ErrorCode, String, FailureSource)> = Vec::new();
    for (pos, topic, seq, key, kind, priority, created_ms, expires_ms, state, attempt, until) in
        rows
    {
        let wanted = spec.wants(&topic, crate::append::kind_of(kind))
            && start_seq.is_none_or(|s| seq >= s)
            && start_ms.is_none_or(|t| created_ms >= t);
        let state = match (state, attempt, until) {
            (Some(s), Some(a), Some(u)) => Some((s, a, u)),
            _ => None,
        };
        if !wanted || matches!(state, Some((SETTLED, _, _))) {
            if contiguous {
                new_cursor = pos;
            }
            continue;
        }
        let flow_key = key.as_ref().map(|k| (topic.clone(), k.clone()));
        let attempt = match state {
            Some((IN_FLIGHT | WAITING, _, until)) if until > now => {
                contiguous = false;
                if let Some(f) = flow_key {
                    blocked.insert(f);
                }
                continue;
            }
            Some((IN_FLIGHT, attempt, _)) if attempt >= claim.max_deliver as i64 => {
                let reason =
                    format!("gave up after {attempt} attempts: not settled within the ack wait");
                dead.push((
                    pos,
                    attempt,
                    ErrorCode::Timeout,
                    reason,
                    FailureSource::Handler,
                ));
                if contiguous {
                    new_cursor = pos;
                }
                continue;
            }
            Some((_, attempt, _)) => attempt + 1,
            None => 1,
        };
        contiguous = false;
        if expires_ms.is_some_and(|t| t <= now) {
            let reason = "expired before delivery".to_owned();
            dead.push((
                pos,
                attempt,
                ErrorCode::Timeout,
                reason,
                FailureSource::Expired,
            ));
            continue;
        }
        if let Some(f) = &flow_key {
            if !blocked.insert(f.clone()) {
                continue;
            }
        }
        flows
            .entry((topic, key))
            .or_default()
            .push_back((pos, priority, attempt));
    }

    // Highest priority first, oldest first; a flow only ever offers its head.
    let mut flows: Vec<VecDeque<(i64, i64, i64)>> = flows.into_values().collect();
    let mut heads: BinaryHeap<(i64, Reverse<i64>, usize)> = flows
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.front().map(|(pos, prio, _)| (*prio, Reverse(*pos), i)))
        .collect();
    let mut chosen: Vec<(i64, i64)> = Vec::new();
    while chosen.len() < claim.max {
        let Some((_, _, i)) = heads.pop() else { break };
        let Some((pos, _, attempt)) = flows[i].pop_front() else {
            continue;
        };
        if let Some((next_pos, next_prio, _)) = flows[i].front() {
            heads.push((*next_prio, Reverse(*next_pos), i));
        }
        chosen.push((pos, attempt));
    }
    let lease_until = now.saturating_add(spec.ack_wait.as_millis().min(i64::MAX as u128) as i64);
    let mut claimed = Vec::with_capacity(chosen.len());
    for (pos, attempt) in chosen {
        sqlx::query(
            "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
             lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
             first_failed_ms = coalesce(deliveries.first_failed_ms,
                 CASE WHEN deliveries.state = 0 THEN deliveries.lease_until_ms END)",
        )
        .bind(&claim.group)
        .bind(pos)
        .bind(IN_FLIGHT)
        .bind(attempt)
        .bind(lease_until)
        .bind(&claim.member)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
        claimed.push((pos, stored(conn, pos, attempt).await?));
    }
    for (pos, attempt, code, reason, source) in dead {
        let env = stored(conn, pos, attempt).await?;
        dead_letter(conn, &claim.group, pos, &env, code, reason, source).await?;
    }
    if new_cursor > cursor {
        sqlx::query("UPDATE groups SET cursor = ? WHERE name = ?")
            .bind(new_cursor)
            .bind(&claim.group)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        sqlx::query("DELETE FROM deliveries WHERE grp = ? AND pos <= ?")
            .bind(&claim.group)
            .bind(new_cursor)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
    }
    Ok(claimed)
}

/// The stored envelope at `pos`, as delivery `attempt`.
async fn stored(conn: &mut SqliteConnection, pos: i64, attempt: i64) -> Result<Envelope> {
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT envelope FROM events WHERE pos = ?")
        .bind(pos)
        .fetch_one(&mut *conn)
        .await
        .map_err(runtime_error)?;
    Ok(decode_stored(&bytes)?.with_attempt(attempt.clamp(1, u32::MAX as i64) as u32))
}

/// The group's cursor and start filters, registering it on first use.
async fn register(
    conn: &mut SqliteConnection,
    claim: &Claim,
) -> Result<(i64, Option<i64>, Option<i64>)> {
    let spec = &claim.spec;
    let row: Option<GroupRow> = sqlx::query_as(
        "SELECT patterns, kinds, cursor, start_seq, start_ms FROM groups WHERE name = ?",
    )
    .bind(&claim.group)
    .fetch_optional(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if let Some((patterns, kinds, cursor, start_seq, start_ms)) = row {
        if patterns != patterns_text(spec) || kinds != kind_bits(spec) {
            return Err(Error::validation(format!(
                "group {:?} follows `{patterns}`; a member cannot follow `{}` (or other kinds)",
                claim.group,
                patterns_text(spec)
            )));
        }
        return Ok((cursor, start_seq, start_ms));
    }
    let (cursor, start_seq, start_ms) = match spec.start {
        StartPosition::Latest => {
            let max: Option<i64> = sqlx::query_scalar("SELECT max(pos) FROM events")
                .fetch_one(&mut *conn)
                .await
                .map_err(runtime_error)?;
            (max.unwrap_or(0), None, None)
        }
        StartPosition::Earliest => (0, None, None),
        StartPosition::Seq(s) => (0, Some(s.min(i64::MAX as u64) as i64), None),
        StartPosition::Time(t) => (0, None, Some(t.timestamp_millis())),
    };
    sqlx::query("INSERT INTO groups (name, patterns, kinds, cursor, start_seq, start_ms) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&claim.group)
        .bind(patterns_text(spec))
        .bind(kind_bits(spec))
        .bind(cursor)
        .bind(start_seq)
        .bind(start_ms)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    Ok((cursor, start_seq, start_ms))
}

/// What a settlement did.
pub(crate) enum Applied {
    /// Recorded; the `pos` of the last effect appended, if any.
    Yes(Option<i64>),
    /// An ack with effects came after its lease ran out: nothing was
    /// written (the new delivery produces the effects), and the caller must
    /// not count the message as handled.
    Stale,
}

/// Record a settlement; one that comes after the lease ran out and the event
/// was claimed again (by anyone) is stale and ignored, effects and all.
pub(crate) async fn settle(
    conn: &mut SqliteConnection,
    s: &Settlement,
    dedupe_window_ms: i64,
) -> Result<Applied> {
    let attempt = s.envelope.attempt() as i64;
    if let Settled::Outcome(Outcome::Ack) = s.outcome {
        // The common case in one statement: settle only our current lease.
        let acked = sqlx::query(
            "UPDATE deliveries SET state = ? WHERE grp = ? AND pos = ? AND state = ? AND attempt = ? AND owner = ?",
        )
        .bind(SETTLED)
        .bind(&s.group)
        .bind(s.pos)
        .bind(IN_FLIGHT)
        .bind(attempt)
        .bind(&s.member)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
        if s.effects.is_empty() {
            return Ok(Applied::Yes(None));
        }
        if acked.rows_affected() == 0 {
            return Ok(Applied::Stale);
        }
        let appended = append(conn, &[&s.effects], dedupe_window_ms).await?;
        return Ok(Applied::Yes(appended.last_pos));
    }
    let current: Option<(i64, i64, Option<String>)> =
        sqlx::query_as("SELECT state, attempt, owner FROM deliveries WHERE grp = ? AND pos = ?")
            .bind(&s.group)
            .bind(s.pos)
            .fetch_optional(&mut *conn)
            .await
            .map_err(runtime_error)?;
    if current != Some((IN_FLIGHT, attempt, Some(s.member.clone()))) {
        return Ok(Applied::Yes(None));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let done = match &s.outcome {
        Settled::Outcome(Outcome::Ack) => Ok(()),
        Settled::Released => set_state(conn, s, WAITING, attempt - 1, 0, None).await,
        Settled::Outcome(Outcome::Defer { delay }) => {
            let delay_ms = delay.as_millis().min(i64::MAX as u128) as i64;
            let until = now.saturating_add(delay_ms);
            set_state(conn, s, WAITING, attempt - 1, until, None).await
        }
        Settled::Outcome(Outcome::Nack { delay, reason }) if attempt >= s.max_deliver as i64 => {
            let reason = format!(
                "gave up after {attempt} attempts: {}",
                reason.as_deref().unwrap_or("nacked")
            );
            dead_letter(
                conn,
                &s.group,
                s.pos,
                &s.envelope,
                ErrorCode::Internal,
                reason,
                FailureSource::Handler,
            )
            .await?;
            let _ = delay;
            Ok(())
        }
        Settled::Outcome(Outcome::Nack { delay, .. }) => {
            let delay_ms = delay.map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
            set_state(
                conn,
                s,
                WAITING,
                attempt,
                now.saturating_add(delay_ms),
                Some(now),
            )
            .await
        }
        Settled::Outcome(Outcome::Term { code, reason }) => {
            dead_letter(
                conn,
                &s.group,
                s.pos,
                &s.envelope,
                *code,
                reason.clone(),
                FailureSource::Handler,
            )
            .await
        }
    };
    done.map(|()| Applied::Yes(None))
}

/// Update a delivery; `failed_at` records the first failure if none is yet.
async fn set_state(
    conn: &mut SqliteConnection,
    s: &Settlement,
    state: i64,
    attempt: i64,
    until: i64,
    failed_at: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE deliveries SET state = ?, attempt = ?, lease_until_ms = ?,
         first_failed_ms = coalesce(first_failed_ms, ?) WHERE grp = ? AND pos = ?",
    )
    .bind(state)
    .bind(attempt)
    .bind(until)
    .bind(failed_at)
    .bind(&s.group)
    .bind(s.pos)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// Dead-letter `env` for `group` and settle its delivery, in the caller's
/// transaction: both happen or neither.
async fn dead_letter(
    conn: &mut SqliteConnection,
    group: &str,
    pos: i64,
    env: &Envelope,
    code: ErrorCode,
    reason: String,
    source: FailureSource,
) -> Result<()> {
    let now = chrono::Utc::now();
    let first: Option<Option<i64>> =
        sqlx::query_scalar("SELECT first_failed_ms FROM deliveries WHERE grp = ? AND pos = ?")
            .bind(group)
            .bind(pos)
            .fetch_optional(&mut *conn)
            .await
            .map_err(runtime_error)?;
    let first = first
        .flatten()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or(now);
    let letter = DeadLetter {
        id: 0,
        envelope: env.clone(),
        group: Some(group.to_owned()),
        reason,
        code,
        first_failed_at: first,
        failed_at: now,
        attempts: env.attempt(),
        source,
    };
    crate::dead_letters::insert(conn, &letter).await?;
    sqlx::query(
        "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner) VALUES (?, ?, ?, ?, 0, NULL)
         ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt",
    )
    .bind(group)
    .bind(pos)
    .bind(SETTLED)
    .bind(env.attempt() as i64)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// Open a member of `spec.group`.
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let group = spec.group.clone().expect("a group subscription");
    let member = Arc::new(Member {
        inner: inner.clone(),
        group,
        id: uuid::Uuid::now_v7().to_string(),
        spec,
        closed: std::sync::atomic::AtomicBool::new(false),
        wake: Notify::new(),
    });
    member.claim(0).await?;
    let close = {
        let member = member.clone();
        CloseHandle::new(move || {
            member.closed.store(true, Ordering::Release);
            member.wake.notify_waiters();
        })
    };
    let state = (member, VecDeque::<(i64, Envelope)>::new());
    let deliveries = stream::unfold(state, |(member, mut buffered)| async move {
        loop {
            if member.is_closed() {
                member.release(buffered).await;
                return None;
            }
            if let Some((pos, env)) = buffered.pop_front() {
                let settle: Arc<dyn Settle> = Arc::new(Lease {
                    member: member.clone(),
                    pos,
                });
                let delivery = Delivery::new(Arc::new(env), settle);
                return Some((Ok(delivery), (member, buffered)));
            }
            let mut committed = member.inner.committed.clone();
            let mut groups = member.inner.groups.clone();
            committed.borrow_and_update();
            groups.borrow_and_update();
            match member.claim(CLAIM_MAX).await {
                Ok(got) if !got.is_empty() => buffered.extend(got),
                Ok(_) => {
                    tokio::select! {
                        _ = committed.changed() => {}
                        _ = groups.changed() => {}
                        _ = member.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_MAX) => {}
                    }
                }
                Err(e) if e.code() == ErrorCode::Unavailable && member.is_closed() => return None,
                Err(e) => return Some((Err(e), (member, buffered))),
            }
        }
    });
    Ok(Subscription::new(Box::pin(deliveries), close))
}

struct Member {
    inner: Arc<Inner>,
    group: String,
    id: String,
    spec: SubscribeSpec,
    closed: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl Member {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.inner.closed.load(Ordering::Acquire)
    }

    async fn claim(&self, max: usize) -> Result<Vec<(i64, Envelope)>> {
        let (reply, done) = oneshot::channel();
        let claim = Claim {
            group: self.group.clone(),
            member: self.id.clone(),
            max,
            spec: self.spec.clone(),
            max_deliver: self.inner.config.deliveries(),
        };
        self.inner
            .writer
            .send(Request::Claim(Box::new(claim), reply))
            .await
            .map_err(|_| crate::append::closed())?;
        done.await.map_err(|_| crate::append::closed())?
    }

    /// Hand back events claimed but never delivered.
    async fn release(&self, buffered: VecDeque<(i64, Envelope)>) {
        for (pos, env) in buffered {
            let _ = self
                .settle(pos, Arc::new(env), Settled::Released, Vec::new())
                .await;
        }
    }

    async fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        outcome: Settled,
        effects: Vec<Envelope>,
    ) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let settlement = Settlement {
            group: self.group.clone(),
            member: self.id.clone(),
            envelope,
            pos,
            outcome,
            max_deliver: self.inner.config.deliveries(),
            effects,
        };
        self.inner
            .writer
            .send(Request::Settle(Box::new(settlement), reply))
            .await
            .map_err(|_| crate::append::closed())?;
        done.await.map_err(|_| crate::append::closed())?
    }
}

/// The settle side of one leased delivery.
struct Lease {
    member: Arc<Member>,
    pos: i64,
}

impl Settle for Lease {
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let member = self.member.clone();
        let (pos, envelope) = (self.pos, envelope.clone());
        Some(Box::pin(async move {
            member
                .settle(pos, envelope, Settled::Outcome(outcome), Vec::new())
                .await
        }))
    }

    /// The ack and the effects go to the writer as one request, so they
    /// commit in one transaction.
    fn ack_with_effects(
        &self,
        envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        let member = self.member.clone();
        let (pos, envelope) = (self.pos, envelope.clone());
        Ok(Box::pin(async move {
            member
                .settle(pos, envelope, Settled::Outcome(Outcome::Ack), effects)
                .await
        }))
    }
}

/// Where event `seq` of `topic` stands for `group` (read-only). The reads
/// share one snapshot: a settle that advances the cursor and deletes the
/// settled rows between two of them would otherwise read as `Pending`.
pub(crate) async fn delivery_state(
    pool: sqlx::SqlitePool,
    topic: herald::Topic,
    seq: u64,
    group: String,
) -> Result<herald::DeliveryState> {
    let mut conn = pool.acquire().await.map_err(runtime_error)?;
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let state = read_delivery_state(&mut conn, topic, seq, group).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    state
}

async fn read_delivery_state(
    conn: &mut SqliteConnection,
    topic: herald::Topic,
    seq: u64,
    group: String,
) -> Result<herald::DeliveryState> {
    use herald::DeliveryState;
    let not_found = |what: String| Error::new(ErrorCode::NotFound, what);
    let pos: Option<i64> = sqlx::query_scalar("SELECT pos FROM events WHERE topic = ? AND seq = ?")
        .bind(topic.as_str())
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?
        .into_iter()
        .next();
    let Some(pos) = pos else {
        return Err(not_found(format!(
            "`{topic}` has no event {seq} (never, or deleted by retention)"
        )));
    };
    let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor FROM groups WHERE name = ?")
        .bind(&group)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?
        .into_iter()
        .next();
    let Some(cursor) = cursor else {
        return Err(not_found(format!("no consumer group {group:?}")));
    };
    let dead: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM dead_letters WHERE grp = ? AND topic = ? AND seq = ? LIMIT 1",
    )
    .bind(&group)
    .bind(topic.as_str())
    .bind(seq as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?
    .into_iter()
    .next();
    if dead.is_some() {
        return Ok(DeliveryState::DeadLettered);
    }
    if pos <= cursor {
        return Ok(DeliveryState::Acked);
    }
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT state, attempt, lease_until_ms FROM deliveries WHERE grp = ? AND pos = ?",
    )
    .bind(&group)
    .bind(pos)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?
    .into_iter()
    .next();
    let now = chrono::Utc::now().timestamp_millis();
    Ok(match row {
        Some((IN_FLIGHT, attempt, until)) if until > now => DeliveryState::InFlight {
            attempt: attempt.clamp(1, u32::MAX as i64) as u32,
        },
        Some((SETTLED, _, _)) => DeliveryState::Acked,
        _ => DeliveryState::Pending,
    })
}

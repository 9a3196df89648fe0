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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald::delivery::BoxFuture;
use herald::group::{
    self as rules, Candidate, CandidateRow, Change, Claimed, Lease, LeaseState, Position, Settled,
};
use herald::{
    DeadLetter, Envelope, Error, ErrorCode, FailureSource, Outcome, Result, SubscribeSpec,
    Subscription,
};
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use crate::append::append;
use crate::store::{decode_stored, runtime_error, Inner};
use crate::writer::Request;

/// Events examined per claim.
const WINDOW: i64 = 128;

/// patterns, kinds, cursor, start_seq, start_ms
type GroupRow = (String, i64, i64, Option<i64>, Option<i64>);
const IN_FLIGHT: i64 = 0;
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

/// Register the group if new (checking a known group follows the same
/// topics), then lease up to `claim.max` events to the member.
pub(crate) async fn claim(conn: &mut SqliteConnection, claim: &Claim) -> Result<Claimed> {
    let now = chrono::Utc::now().timestamp_millis();
    let position = register(conn, claim).await?;
    if claim.max == 0 {
        return Ok(Claimed::default());
    }
    let spec = &claim.spec;
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(pos), 0) FROM events")
        .fetch_one(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let mut position = position;
    let plan = loop {
        // Settled events are left out, so one held event does not hide what
        // comes after it.
        let rows: Vec<CandidateRow> = sqlx::query_as(
            "SELECT e.pos, e.topic, e.seq, e.key, e.kind, e.priority, e.created_ms, e.expires_ms,
                    d.state, d.attempt, d.lease_until_ms
             FROM events e LEFT JOIN deliveries d ON d.grp = ? AND d.pos = e.pos
             WHERE e.pos > ? AND e.pos <= ? AND (d.state IS NULL OR d.state <> ?)
             ORDER BY e.pos LIMIT ?",
        )
        .bind(&claim.group)
        .bind(position.cursor)
        .bind(last)
        .bind(SETTLED)
        .bind(WINDOW)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let complete_to = match rows.last() {
            Some(row) if rows.len() as i64 == WINDOW => row.0,
            _ => last,
        };
        let rows = rows.into_iter().map(Candidate::from);
        let plan = rules::plan(
            spec,
            &position,
            rows,
            complete_to,
            claim.max,
            claim.max_deliver,
            now,
        );
        // A window of only events the group does not follow: read on.
        if plan.claims.is_empty() && plan.cursor == complete_to && complete_to < last {
            apply(conn, claim, &position, &plan).await?;
            position.cursor = plan.cursor;
            continue;
        }
        break (plan, complete_to < last);
    };
    let (plan, beyond) = plan;
    let lease_until = now.saturating_add(spec.ack_wait.as_millis().min(i64::MAX as u128) as i64);
    let mut claimed = Vec::with_capacity(plan.claims.len());
    for &(pos, attempt) in &plan.claims {
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
    apply(conn, claim, &position, &plan).await?;
    Ok(Claimed {
        events: claimed,
        more: plan.more || beyond,
    })
}

/// Dead-letter what `plan` dooms and move the group's cursor.
async fn apply(
    conn: &mut SqliteConnection,
    claim: &Claim,
    position: &Position,
    plan: &rules::Plan,
) -> Result<()> {
    for d in &plan.dead {
        let env = stored(conn, d.pos, d.attempt).await?;
        let reason = d.reason.clone();
        dead_letter(conn, &claim.group, d.pos, &env, d.code, reason, d.source).await?;
    }
    if plan.cursor > position.cursor {
        sqlx::query("UPDATE groups SET cursor = ? WHERE name = ?")
            .bind(plan.cursor)
            .bind(&claim.group)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        sqlx::query("DELETE FROM deliveries WHERE grp = ? AND pos <= ?")
            .bind(&claim.group)
            .bind(plan.cursor)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
    }
    Ok(())
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
async fn register(conn: &mut SqliteConnection, claim: &Claim) -> Result<Position> {
    let spec = &claim.spec;
    let row: Option<GroupRow> = sqlx::query_as(
        "SELECT patterns, kinds, cursor, start_seq, start_ms FROM groups WHERE name = ?",
    )
    .bind(&claim.group)
    .fetch_optional(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if let Some((patterns, kinds, cursor, start_seq, start_ms)) = row {
        rules::check_member(&claim.group, &patterns, kinds, spec)?;
        return Ok(Position {
            cursor,
            start_seq,
            start_ms,
        });
    }
    let last: Option<i64> = sqlx::query_scalar("SELECT max(pos) FROM events")
        .fetch_one(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let last = last.unwrap_or(0);
    let mut position = Position::new(&spec.start, last);
    if position.cursor < last {
        // Start just below the first event the group may want, found by
        // index per matching topic, so no claim walks the events of topics
        // it does not follow (DESIGN.md §10: positioning is a lookup).
        position.cursor = match first_wanted(conn, spec, &position).await? {
            Some(pos) => (pos - 1).max(position.cursor),
            None => last,
        };
    }
    sqlx::query("INSERT INTO groups (name, patterns, kinds, cursor, start_seq, start_ms) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&claim.group)
        .bind(rules::patterns_text(spec))
        .bind(rules::kind_bits(spec))
        .bind(position.cursor)
        .bind(position.start_seq)
        .bind(position.start_ms)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    Ok(position)
}

/// The lowest `pos` a new group at `position` may want: per topic its
/// patterns match, the first event at or after its start, by the
/// `(topic, seq)` index (or `(topic, created_ms)` for a time start). Costs a
/// scan of the topic names and one index lookup per matching topic,
/// whatever the number of events.
pub(crate) async fn first_wanted(
    conn: &mut SqliteConnection,
    spec: &herald::SubscribeSpec,
    position: &Position,
) -> Result<Option<i64>> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM topics")
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let mut first: Option<i64> = None;
    for name in names
        .iter()
        .filter(|t| spec.patterns.iter().any(|p| p.matches_str(t)))
    {
        let pos: Option<i64> = match position.start_ms {
            Some(ms) => sqlx::query_scalar(FIRST_BY_TIME)
                .bind(name)
                .bind(ms)
                .fetch_one(&mut *conn)
                .await
                .map_err(runtime_error)?,
            None => sqlx::query_scalar(FIRST_BY_SEQ)
                .bind(name)
                .bind(position.start_seq.unwrap_or(1))
                .fetch_optional(&mut *conn)
                .await
                .map_err(runtime_error)?,
        };
        first = match (first, pos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// A topic's first event at or after a `seq` (`pos` grows with `seq`).
const FIRST_BY_SEQ: &str =
    "SELECT pos FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT 1";
/// A topic's first event (lowest `pos`) created at or after a time.
const FIRST_BY_TIME: &str = "SELECT min(pos) FROM events WHERE topic = ? AND created_ms >= ?";

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
    match rules::change(&s.outcome, attempt, s.max_deliver, now) {
        Change::Settle => {}
        Change::Wait {
            attempt,
            until_ms,
            failed_ms,
        } => set_state(conn, s, attempt, until_ms, failed_ms).await?,
        Change::DeadLetter { code, reason } => {
            let source = FailureSource::Handler;
            dead_letter(conn, &s.group, s.pos, &s.envelope, code, reason, source).await?
        }
    }
    Ok(Applied::Yes(None))
}

/// Put a delivery back to waiting; `failed_at` records the first failure
/// if none is yet.
async fn set_state(
    conn: &mut SqliteConnection,
    s: &Settlement,
    attempt: i64,
    until: i64,
    failed_at: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE deliveries SET state = ?, attempt = ?, lease_until_ms = ?,
         first_failed_ms = coalesce(first_failed_ms, ?) WHERE grp = ? AND pos = ?",
    )
    .bind(LeaseState::Waiting.code())
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
    rules::subscribe(Arc::new(Member {
        inner: inner.clone(),
        group,
        id: uuid::Uuid::now_v7().to_string(),
        spec,
    }))
    .await
}

/// One member: claims and settlements go through the writer.
struct Member {
    inner: Arc<Inner>,
    group: String,
    id: String,
    spec: SubscribeSpec,
}

impl rules::GroupMember for Member {
    fn claim(&self, max: usize) -> BoxFuture<'_, Result<Claimed>> {
        Box::pin(async move {
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
        })
    }

    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        outcome: Settled,
        effects: Vec<Envelope>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
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
        })
    }

    /// New events, settlements (the writer's signals; other processes'
    /// commits are noticed by the store's `data_version` poll), or
    /// `IDLE_MAX` for leases that run out.
    fn changes(&self) -> BoxFuture<'static, ()> {
        rules::changes(self.inner.committed.clone(), self.inner.groups.clone())
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn ack_wait(&self) -> Duration {
        self.spec.ack_wait
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
    let lease: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT state, attempt, lease_until_ms FROM deliveries WHERE grp = ? AND pos = ?",
    )
    .bind(&group)
    .bind(pos)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?
    .into_iter()
    .next();
    let lease = lease.and_then(|(s, a, u)| Lease::from_columns(Some(s), Some(a), Some(u)));
    let now = chrono::Utc::now().timestamp_millis();
    Ok(rules::delivery_state(
        pos,
        cursor,
        dead.is_some(),
        lease,
        now,
    ))
}

/// Every group with its offset and lag on each topic it follows (see
/// `herald::Transport::groups`), read in one transaction: unsettled are the
/// events of a followed kind past the cursor, at or after the group's start,
/// without a settled delivery.
pub(crate) async fn groups(pool: sqlx::SqlitePool) -> Result<Vec<herald::GroupInfo>> {
    let mut conn = pool.acquire().await.map_err(runtime_error)?;
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let read = read_groups(&mut conn).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    read
}

async fn read_groups(conn: &mut SqliteConnection) -> Result<Vec<herald::GroupInfo>> {
    let topics: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, last_seq FROM topics WHERE last_seq > 0 ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
    let topics = topics
        .into_iter()
        .map(|(t, last)| Ok(herald::TopicInfo::new(herald::Topic::new(t)?, last as u64)))
        .collect::<Result<Vec<_>>>()?;
    let groups: Vec<(String, String)> =
        sqlx::query_as("SELECT name, patterns FROM groups ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
    let mut list = Vec::with_capacity(groups.len());
    for (name, patterns) in groups {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT e.topic, count(*), min(e.seq)
             FROM groups g JOIN events e ON e.pos > g.cursor
                  AND e.seq >= coalesce(g.start_seq, 0) AND e.created_ms >= coalesce(g.start_ms, 0)
                  AND (g.kinds >> e.kind) & 1 = 1
             LEFT JOIN deliveries d ON d.grp = g.name AND d.pos = e.pos
             WHERE g.name = ? AND (d.state IS NULL OR d.state <> ?)
             GROUP BY e.topic",
        )
        .bind(&name)
        .bind(LeaseState::Settled.code())
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let unsettled = rows
            .into_iter()
            .map(|(t, n, lowest)| (t, (n as u64, lowest as u64)))
            .collect();
        list.push(herald::group::info(&name, &patterns, &topics, &unsettled)?);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The plan SQLite makes for `sql`, one line per step.
    async fn plan_of(conn: &mut SqliteConnection, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind("a.b")
                .bind(1_i64)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn positioning_a_group_is_an_index_lookup_per_topic() {
        let conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let mut conn = crate::schema::migrate(conn, ":memory:".into())
            .await
            .unwrap();
        for sql in [FIRST_BY_SEQ, FIRST_BY_TIME] {
            let plan = plan_of(&mut conn, sql).await;
            assert!(plan.contains("SEARCH events USING"), "{sql}:\n{plan}");
            assert!(plan.contains("INDEX"), "{sql}:\n{plan}");
            assert!(!plan.contains("SCAN events"), "{sql}:\n{plan}");
        }
    }
}

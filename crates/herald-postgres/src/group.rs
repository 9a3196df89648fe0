//! Durable consumer groups on PostgreSQL: members in any number of
//! processes share one group.
//!
//! Owns the `groups` and `deliveries` tables and the SQL of claims,
//! settlements, delivery states and the group list (offsets and lag); the
//! rules (what is claimable, what a settlement changes, the member stream)
//! are `herald::group`'s. A claim
//! locks its group's row (`SELECT … FOR UPDATE`), so claims of one group run
//! one at a time across processes while settlements and other groups go on
//! beside them. A claim commits with `synchronous_commit = off`: a lease lost
//! to a server crash only means the event is delivered again, and the
//! member's next synchronous commit (its ack) flushes it anyway. Acks,
//! dead letters and a handler's effects commit synchronously, so they are
//! on disk before `Ok`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald::delivery::BoxFuture;
use herald::group::{
    self as rules, Candidate, CandidateRow, Change, Claimed, Lease, LeaseState, Plan, Position,
    Settled,
};
use herald::{
    DeadLetter, DeliveryState, Envelope, Error, ErrorCode, FailureSource, GroupInfo, Outcome,
    Result, SubscribeSpec, Subscription, Topic,
};
use sqlx::PgConnection;

use crate::store::{closed, decode_stored, insert_outbox, runtime_error, Inner};

/// Unsettled events a claim examines first; it looks further (up to
/// [`WINDOW_MAX`]) only when those hold nothing it may take.
const WINDOW: i64 = 32;
const WINDOW_MAX: i64 = 256;
/// How far an idle claim lets the cursor lag before moving it.
const CURSOR_STEP: i64 = 256;

const SETTLED: i64 = 2;

/// Open a member of `spec.group`.
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let group = spec.group.clone().expect("a group subscription");
    rules::subscribe(Arc::new(Member {
        inner: inner.clone(),
        group,
        id: uuid::Uuid::now_v7().to_string(),
        topic: match herald::log_tail::literal_topics(&spec).as_deref() {
            Some([one]) => Some(one.clone()),
            _ => None,
        },
        spec,
    }))
    .await
}

/// One member of a group, in this process.
struct Member {
    inner: Arc<Inner>,
    group: String,
    id: String,
    spec: SubscribeSpec,
    /// The topic, when the group follows one literal topic: its events are
    /// read through the `(topic, pos)` index. Otherwise claims read every
    /// topic's events in `pos` order and skip the unwanted (a filter on
    /// several topics would make the planner sort them all).
    topic: Option<String>,
}

impl rules::GroupMember for Member {
    fn claim(&self, max: usize) -> BoxFuture<'_, Result<Claimed>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(closed());
            }
            let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
            let claimed = self.claim_in(&mut tx, max).await?;
            tx.commit().await.map_err(runtime_error)?;
            Ok(claimed)
        })
    }

    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        settled: Settled,
        effects: Vec<Envelope>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(closed());
            }
            let attempt = envelope.attempt() as i64;
            if settled == Settled::Outcome(Outcome::Ack) {
                let keyed = envelope.key().is_some();
                return self.ack(pos, attempt, keyed, effects).await;
            }
            let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
            self.settle_in(&mut tx, pos, &envelope, &settled).await?;
            tx.commit().await.map_err(runtime_error)?;
            self.inner.groups.send_modify(|n| *n = n.wrapping_add(1));
            Ok(())
        })
    }

    /// New events, settlements in this process or (by NOTIFY) others that
    /// hand an event back, or `IDLE_MAX`.
    fn changes(&self) -> BoxFuture<'static, ()> {
        rules::changes(
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
}

impl Member {
    /// The claim, inside its transaction.
    async fn claim_in(&self, conn: &mut PgConnection, max: usize) -> Result<Claimed> {
        let (mut position, last) = self.register(conn, max > 0).await?;
        if max == 0 {
            return Ok(Claimed::default());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let max_deliver = self.inner.config.deliveries();
        let mut limit = WINDOW;
        let plan = loop {
            let rows = self.window(conn, position.cursor, last, limit).await?;
            let full = rows.len() as i64 == limit;
            let complete_to = match rows.last() {
                Some(row) if full => row.0,
                _ => last,
            };
            let rows = rows.into_iter().map(Candidate::from);
            let plan = rules::plan(
                &self.spec,
                &position,
                rows,
                complete_to,
                max,
                max_deliver,
                now,
            );
            // A window of only events the group does not follow: read on.
            if plan.claims.is_empty() && plan.cursor == complete_to && complete_to < last {
                self.apply(conn, &position, &plan).await?;
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
        let events = self.lease(conn, &plan, now).await?;
        // An idle claim leaves a short cursor move for the next one that
        // leases (it costs a round trip; settled events are skipped anyway).
        let idle = events.is_empty() && plan.dead.is_empty();
        if !idle || plan.cursor - position.cursor >= CURSOR_STEP {
            self.apply(conn, &position, &plan).await?;
        }
        Ok(Claimed {
            events,
            more: plan.more || beyond,
        })
    }

    /// Up to `limit` events after `cursor` (through `last`) that are not
    /// settled for the group, with the group's delivery rows.
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

    /// Lease the plan's events to this member; their envelopes. An event
    /// settled since the window was read (a late ack of an expired lease)
    /// is left alone.
    async fn lease(
        &self,
        conn: &mut PgConnection,
        plan: &Plan,
        now: i64,
    ) -> Result<Vec<(i64, Envelope)>> {
        if plan.claims.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.inner.s;
        let ack_wait = self.spec.ack_wait.as_millis().min(i64::MAX as u128) as i64;
        let (positions, attempts): (Vec<i64>, Vec<i64>) = plan.claims.iter().copied().unzip();
        let leased: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(&format!(
            "WITH leased AS (
                 INSERT INTO {s}.deliveries AS d (grp, pos, state, attempt, lease_until_ms, owner)
                 SELECT $1, p, 0, a, $4, $5 FROM UNNEST($2::bigint[], $3::bigint[]) AS u(p, a)
                 ON CONFLICT (grp, pos) DO UPDATE SET state = 0, attempt = excluded.attempt,
                     lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
                     first_failed_ms = coalesce(d.first_failed_ms,
                         CASE WHEN d.state = 0 THEN d.lease_until_ms END)
                 WHERE d.state <> $6
                 RETURNING d.pos, d.attempt)
             SELECT l.pos, l.attempt, e.envelope FROM leased l JOIN {s}.events e ON e.pos = l.pos"
        ))
        .bind(&self.group)
        .bind(&positions)
        .bind(&attempts)
        .bind(now.saturating_add(ack_wait))
        .bind(&self.id)
        .bind(SETTLED)
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

    /// Dead-letter what `plan` dooms and move the group's cursor.
    async fn apply(&self, conn: &mut PgConnection, position: &Position, plan: &Plan) -> Result<()> {
        let s = &self.inner.s;
        if !plan.dead.is_empty() {
            let positions: Vec<i64> = plan.dead.iter().map(|d| d.pos).collect();
            let mut envelopes = self.envelopes(conn, &positions).await?;
            for d in &plan.dead {
                let Some(env) = envelopes.remove(&d.pos) else {
                    continue;
                };
                let env = env.with_attempt(d.attempt.clamp(1, u32::MAX as i64) as u32);
                let reason = d.reason.clone();
                self.dead_letter(conn, d.pos, &env, d.code, reason, d.source)
                    .await?;
            }
        }
        if plan.cursor > position.cursor {
            sqlx::query(&format!(
                "UPDATE {s}.groups SET cursor = $1 WHERE name = $2"
            ))
            .bind(plan.cursor)
            .bind(&self.group)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
            sqlx::query(&format!(
                "DELETE FROM {s}.deliveries WHERE grp = $1 AND pos <= $2"
            ))
            .bind(&self.group)
            .bind(plan.cursor)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        }
        Ok(())
    }

    /// Lock the group's row (claims of a group take turns), registering the
    /// group on first use and checking that a known group follows the same
    /// topics; the group's position and the log's last `pos`. A claim that
    /// `leases` commits asynchronously (see the module).
    async fn register(&self, conn: &mut PgConnection, leases: bool) -> Result<(Position, i64)> {
        let s = &self.inner.s;
        let select = format!(
            "SELECT set_config('synchronous_commit', $2, true), patterns, kinds, cursor,
                    start_seq, start_ms, (SELECT coalesce(max(pos), 0) FROM {s}.events)
             FROM {s}.groups WHERE name = $1 FOR UPDATE"
        );
        type GroupRow = (String, String, i64, i64, Option<i64>, Option<i64>, i64);
        let commit = if leases { "off" } else { "on" };
        for _ in 0..2 {
            let row: Option<GroupRow> = sqlx::query_as(&select)
                .bind(&self.group)
                .bind(commit)
                .fetch_optional(&mut *conn)
                .await
                .map_err(runtime_error)?;
            if let Some((_, patterns, kinds, cursor, start_seq, start_ms, last)) = row {
                rules::check_member(&self.group, &patterns, kinds, &self.spec)?;
                let position = Position {
                    cursor,
                    start_seq,
                    start_ms,
                };
                return Ok((position, last));
            }
            // Another process may register it at the same moment: the first
            // wins, and the loop reads (and locks) its row. A `Latest` group
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

    /// An ack: one statement, or with `effects` a transaction that appends
    /// them to the outbox only if this member's lease still holds. `keyed`:
    /// the event has a key.
    async fn ack(&self, pos: i64, attempt: i64, keyed: bool, effects: Vec<Envelope>) -> Result<()> {
        let sql = format!(
            "UPDATE {}.deliveries SET state = $1
             WHERE grp = $2 AND pos = $3 AND state = 0 AND attempt = $4 AND owner = $5",
            self.inner.s
        );
        let ack = sqlx::query(&sql)
            .bind(SETTLED)
            .bind(&self.group)
            .bind(pos)
            .bind(attempt)
            .bind(&self.id);
        if effects.is_empty() {
            ack.execute(&self.inner.pool).await.map_err(runtime_error)?;
        } else {
            let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
            let acked = ack.execute(&mut *tx).await.map_err(runtime_error)?;
            if acked.rows_affected() == 0 {
                return Err(rules::lease_lost());
            }
            insert_outbox(&self.inner, &mut tx, &effects).await?;
            tx.commit().await.map_err(runtime_error)?;
        }
        // The next event of its key may be claimed now: wake this process's
        // idle members. (A keyless ack frees nothing; waking them would
        // only cost a claim.)
        if keyed {
            self.inner.groups.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Any other settlement, inside its transaction; one that comes after
    /// the lease ran out (and the event was claimed again) is ignored. Other
    /// processes' idle members are notified: the event is theirs to take.
    async fn settle_in(
        &self,
        conn: &mut PgConnection,
        pos: i64,
        envelope: &Envelope,
        settled: &Settled,
    ) -> Result<()> {
        let s = &self.inner.s;
        let attempt = envelope.attempt() as i64;
        let current: Option<(i64, i64, Option<String>)> = sqlx::query_as(&format!(
            "SELECT state, attempt, owner FROM {s}.deliveries WHERE grp = $1 AND pos = $2 FOR UPDATE"
        ))
        .bind(&self.group)
        .bind(pos)
        .fetch_optional(&mut *conn)
        .await
        .map_err(runtime_error)?;
        if current != Some((0, attempt, Some(self.id.clone()))) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        match rules::change(settled, attempt, self.inner.config.deliveries(), now) {
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
                .bind(&self.group)
                .bind(pos)
                .execute(&mut *conn)
                .await
                .map_err(runtime_error)?;
            }
            Change::DeadLetter { code, reason } => {
                let source = FailureSource::Handler;
                self.dead_letter(conn, pos, envelope, code, reason, source)
                    .await?;
            }
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.inner.groups_channel)
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        Ok(())
    }

    /// Dead-letter `env` and settle its delivery, in the caller's
    /// transaction: both happen or neither.
    async fn dead_letter(
        &self,
        conn: &mut PgConnection,
        pos: i64,
        env: &Envelope,
        code: ErrorCode,
        reason: String,
        source: FailureSource,
    ) -> Result<()> {
        let s = &self.inner.s;
        let now = chrono::Utc::now();
        let first: Option<Option<i64>> = sqlx::query_scalar(&format!(
            "SELECT first_failed_ms FROM {s}.deliveries WHERE grp = $1 AND pos = $2"
        ))
        .bind(&self.group)
        .bind(pos)
        .fetch_optional(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let letter = DeadLetter {
            id: 0,
            envelope: env.clone(),
            group: Some(self.group.clone()),
            reason,
            code,
            first_failed_at: first
                .flatten()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or(now),
            failed_at: now,
            attempts: env.attempt(),
            source,
        };
        crate::dead_letters::insert(s, conn, &letter).await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.deliveries (grp, pos, state, attempt, lease_until_ms, owner)
             VALUES ($1, $2, $3, $4, 0, NULL)
             ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt"
        ))
        .bind(&self.group)
        .bind(pos)
        .bind(SETTLED)
        .bind(env.attempt() as i64)
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
        Ok(())
    }
}

/// Where event `seq` of `topic` stands for `group`, read in one snapshot.
pub(crate) async fn delivery_state(
    inner: &Inner,
    topic: &Topic,
    seq: u64,
    group: &str,
) -> Result<DeliveryState> {
    let s = &inner.s;
    let not_found = |what: String| Error::new(ErrorCode::NotFound, what);
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(runtime_error)?;
    let seq = seq.min(i64::MAX as u64) as i64;
    let pos: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT pos FROM {s}.events WHERE topic = $1 AND seq = $2"
    ))
    .bind(topic.as_str())
    .bind(seq)
    .fetch_optional(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let Some(pos) = pos else {
        return Err(not_found(format!(
            "`{topic}` has no event {seq} (never, or deleted by retention)"
        )));
    };
    let cursor: Option<i64> =
        sqlx::query_scalar(&format!("SELECT cursor FROM {s}.groups WHERE name = $1"))
            .bind(group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(runtime_error)?;
    let Some(cursor) = cursor else {
        return Err(not_found(format!("no consumer group {group:?}")));
    };
    let dead: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {s}.dead_letters WHERE grp = $1 AND topic = $2 AND seq = $3)"
    ))
    .bind(group)
    .bind(topic.as_str())
    .bind(seq)
    .fetch_one(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT state, attempt, lease_until_ms FROM {s}.deliveries WHERE grp = $1 AND pos = $2"
    ))
    .bind(group)
    .bind(pos)
    .fetch_optional(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let lease = row.and_then(|(s, a, u)| Lease::from_columns(Some(s), Some(a), Some(u)));
    let now = chrono::Utc::now().timestamp_millis();
    Ok(rules::delivery_state(pos, cursor, dead, lease, now))
}

/// Every group, by name, with its standing on each topic with events that
/// its patterns match, read in one snapshot. A group's unsettled events of a
/// topic are those above its cursor, of its kinds and from its start, with
/// no settled delivery row: their count is its lag, and it has settled
/// through the `seq` before the lowest of them (the topic's last `seq` when
/// there are none).
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>> {
    let s = &inner.s;
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(runtime_error)?;
    let topics = crate::store::topics(&mut *tx, s).await?;
    // One row per group and topic with unsettled events; a group with none
    // gets one row without a topic.
    type Row = (String, String, Option<String>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT g.name, g.patterns, u.topic, u.lag, u.lowest
         FROM {s}.groups g LEFT JOIN LATERAL (
             SELECT e.topic, count(*) AS lag, min(e.seq) AS lowest
             FROM {s}.events e
             LEFT JOIN {s}.deliveries d ON d.grp = g.name AND d.pos = e.pos
             WHERE e.pos > g.cursor AND d.state IS DISTINCT FROM $1
               AND (g.kinds >> e.kind::int) & 1 = 1
               AND (g.start_seq IS NULL OR e.seq >= g.start_seq)
               AND (g.start_ms IS NULL OR e.created_ms >= g.start_ms)
             GROUP BY e.topic
         ) u ON true"
    ))
    .bind(SETTLED)
    .fetch_all(&mut *tx)
    .await
    .map_err(runtime_error)?;
    tx.commit().await.map_err(runtime_error)?;
    // Per group, by name: its patterns and, per topic, its unsettled
    // events as (count, lowest seq).
    type Unsettled = HashMap<String, (u64, u64)>;
    let mut by_group: BTreeMap<String, (String, Unsettled)> = BTreeMap::new();
    for (name, patterns, topic, lag, lowest) in rows {
        let (_, by_topic) = by_group.entry(name).or_insert((patterns, HashMap::new()));
        if let (Some(topic), Some(lag), Some(lowest)) = (topic, lag, lowest) {
            by_topic.insert(topic, (lag as u64, lowest as u64));
        }
    }
    by_group
        .into_iter()
        .map(|(name, (patterns, by_topic))| rules::info(&name, &patterns, &topics, &by_topic))
        .collect()
}

/// Where a new group (or a group-less tail) starting at `start` (not
/// `Latest`) puts its cursor: just below the first event it may want — per topic its
/// patterns match, the first at or after its start, by the `(topic,
/// seq)` index (or `(topic, created_ms)` for a time start) — or after
/// the log's last event when no matching topic has one. Costs a read of
/// the topic names and one index lookup per matching topic, whatever
/// the number of events (DESIGN.md §10). The topics are read again in
/// the statement that finds the events, and the lookup is repeated if
/// one appeared in between, so a topic made meanwhile is not skipped.
pub(crate) async fn start_cursor(
    conn: &mut PgConnection,
    s: &str,
    spec: &SubscribeSpec,
    start: &Position,
) -> Result<i64> {
    let first = match start.start_ms {
        Some(_) => format!(
            "SELECT min(x.pos) FROM unnest($1::text[]) AS t(name) CROSS JOIN LATERAL
             (SELECT min(e.pos) AS pos FROM {s}.events e
              WHERE e.topic = t.name AND e.created_ms >= $2) x"
        ),
        None => format!(
            "SELECT min(x.pos) FROM unnest($1::text[]) AS t(name) CROSS JOIN LATERAL
             (SELECT e.pos FROM {s}.events e
              WHERE e.topic = t.name AND e.seq >= $2 ORDER BY e.seq LIMIT 1) x"
        ),
    };
    let lookup = format!(
        "SELECT (SELECT count(*) FROM {s}.topics), (SELECT coalesce(max(pos), 0) FROM {s}.events), ({first})"
    );
    loop {
        let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {s}.topics"))
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
        let matching: Vec<String> = names
            .iter()
            .filter(|t| spec.patterns.iter().any(|p| p.matches_str(t)))
            .cloned()
            .collect();
        let from = start.start_ms.or(start.start_seq).unwrap_or(1);
        let (topics, last, first): (i64, i64, Option<i64>) = sqlx::query_as(&lookup)
            .bind(&matching)
            .bind(from)
            .fetch_one(&mut *conn)
            .await
            .map_err(runtime_error)?;
        if topics as usize == names.len() {
            return Ok(first.map_or(last, |pos| pos - 1));
        }
    }
}

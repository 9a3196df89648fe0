//! Durable consumer groups: leases in the database, so members in any number
//! of tasks and processes share one group.
//!
//! Owns the `groups`, `deliveries` and `members` tables and their SQL, which the
//! writer runs (a member's side is `member.rs`). A group
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
//!
//! Does not own the requests' types (`request`), positioning a new group
//! (`log::first_wanted`), the dead-letter row (`log`), or reading a group's
//! state for inspection (`inspect`).

use herald::backend::group::{
    self as rules, Candidate, CandidateRow, Change, Claimed, LeaseState, Position, Settled,
};
use std::collections::HashMap;

use herald::{DeadLetter, Envelope, ErrorCode, FailureSource, Outcome, Result};
use sqlx::SqliteConnection;

use crate::conn::{decode_stored, runtime_error};
use crate::log::{append, first_wanted, insert_dead_letter};
use crate::request::{Claim, Settlement};

/// Events examined per claim. Reading a row costs about a microsecond
/// (the `events` rows carry their envelopes), so a wider window makes
/// every claim dearer, the strictly ordered one-key claim most (measured:
/// 1,024 rows made the drain two to four times slower than 128).
const WINDOW: i64 = 128;

/// How far the cursor moves between deletes of the delivery rows it
/// passed.
const PRUNE_STEP: i64 = 64;

/// patterns, kinds, cursor, start_seq, start_ms, the log's last pos, live
/// members
type GroupRow = (String, i64, i64, Option<i64>, Option<i64>, i64, i64);
const IN_FLIGHT: i64 = 0;
const SETTLED: i64 = 2;

/// Register the group if new (checking a known group follows the same
/// topics), then lease up to `claim.max` events to the member: a window
/// read, one statement for the leases and one for their envelopes,
/// however many it takes.
pub(crate) async fn claim(conn: &mut SqliteConnection, claim: &Claim) -> Result<Claimed> {
    let now = chrono::Utc::now().timestamp_millis();
    seen(conn, claim, now).await?;
    let (position, last, members) = register(conn, claim, now).await?;
    if claim.max == 0 {
        return Ok(Claimed::default());
    }
    let spec = &claim.spec;
    let mut position = position;
    let plan = loop {
        // Settled events are left out, so one held event does not hide what
        // comes after it.
        let rows = window_rows(conn, claim, position.cursor, last).await?;
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
            rules::Share {
                max: claim.max,
                members,
            },
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
    let claimed = lease(conn, claim, &plan.claims, lease_until).await?;
    apply(conn, claim, &position, &plan).await?;
    Ok(Claimed {
        events: claimed,
        more: plan.more || beyond,
    })
}

/// Up to [`WINDOW`] events after `cursor` through `last`, in `pos` order,
/// with the group's records of them, leaving out those settled for the
/// group (so one held event does not hide what comes after it). The rows
/// come as one JSON array in one value: handing a claim's rows over one
/// value at a time cost more than reading them.
async fn window_rows(
    conn: &mut SqliteConnection,
    claim: &Claim,
    cursor: i64,
    last: i64,
) -> Result<Vec<CandidateRow>> {
    let rows: String = sqlx::query_scalar(
        "SELECT json_group_array(json_array(pos, topic, seq, key, kind, priority, created_ms,
                    expires_ms, state, attempt, lease_until_ms) ORDER BY pos)
         FROM (SELECT e.pos, e.topic, e.seq, e.key, e.kind, e.priority, e.created_ms,
                      e.expires_ms, d.state, d.attempt, d.lease_until_ms
               FROM events e LEFT JOIN deliveries d ON d.grp = ? AND d.pos = e.pos
               WHERE e.pos > ? AND e.pos <= ? AND (d.state IS NULL OR d.state <> ?)
               ORDER BY e.pos LIMIT ?)",
    )
    .bind(&claim.group)
    .bind(cursor)
    .bind(last)
    .bind(SETTLED)
    .bind(WINDOW)
    .fetch_one(&mut *conn)
    .await
    .map_err(runtime_error)?;
    serde_json::from_str(&rows)
        .map_err(|e| herald::Error::internal(format!("a claim's window did not decode: {e}")))
}

/// Lease `claims` (`(pos, attempt)`) to the member until `lease_until`, in
/// one statement, and read their envelopes in one more; in `claims`' order.
async fn lease(
    conn: &mut SqliteConnection,
    claim: &Claim,
    claims: &[(i64, i64)],
    lease_until: i64,
) -> Result<Vec<(i64, Envelope)>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(claims).map_err(|e| herald::Error::internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner)
         SELECT ?, j.value ->> 0, ?, j.value ->> 1, ?, ? FROM json_each(?) j WHERE true
         ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
         lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
         first_failed_ms = coalesce(deliveries.first_failed_ms,
             CASE WHEN deliveries.state = 0 THEN deliveries.lease_until_ms END)",
    )
    .bind(&claim.group)
    .bind(IN_FLIGHT)
    .bind(lease_until)
    .bind(&claim.member)
    .bind(&list)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT pos, envelope FROM events WHERE pos IN (SELECT j.value ->> 0 FROM json_each(?) j)",
    )
    .bind(&list)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    let mut bytes: HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    claims
        .iter()
        .map(|&(pos, attempt)| {
            let stored = bytes
                .remove(&pos)
                .ok_or_else(|| herald::Error::internal(format!("event {pos} left the log")))?;
            Ok((
                pos,
                decode_stored(&stored)?.with_attempt(attempt.clamp(1, u32::MAX as i64) as u32),
            ))
        })
        .collect()
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
        // Rows at or below the cursor are never read again; clearing them
        // once per PRUNE_STEP events saves a statement on most claims.
        if plan.cursor / PRUNE_STEP > position.cursor / PRUNE_STEP {
            sqlx::query("DELETE FROM deliveries WHERE grp = ? AND pos <= ?")
                .bind(&claim.group)
                .bind(plan.cursor)
                .execute(&mut *conn)
                .await
                .map_err(runtime_error)?;
        }
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

/// Record that the member claims now (when it asks to: it refreshes its
/// row every fifth of [`rules::MEMBER_TTL`]); a member registering also clears
/// out the group's members not seen for [`rules::MEMBER_TTL`].
async fn seen(conn: &mut SqliteConnection, claim: &Claim, now: i64) -> Result<()> {
    if !claim.refresh {
        return Ok(());
    }
    if claim.max == 0 {
        sqlx::query("DELETE FROM members WHERE grp = ? AND seen_ms <= ?")
            .bind(&claim.group)
            .bind(now - ttl_ms())
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
    }
    sqlx::query(
        "INSERT INTO members (grp, id, seen_ms) VALUES (?, ?, ?)
         ON CONFLICT (grp, id) DO UPDATE SET seen_ms = excluded.seen_ms",
    )
    .bind(&claim.group)
    .bind(&claim.member)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

fn ttl_ms() -> i64 {
    rules::MEMBER_TTL.as_millis() as i64
}

/// The group's cursor and start filters (registering it on first use),
/// the log's last `pos` and the group's live members.
async fn register(
    conn: &mut SqliteConnection,
    claim: &Claim,
    now: i64,
) -> Result<(Position, i64, usize)> {
    let spec = &claim.spec;
    let row: Option<GroupRow> = sqlx::query_as(
        "SELECT patterns, kinds, cursor, start_seq, start_ms,
                (SELECT coalesce(max(pos), 0) FROM events),
                (SELECT count(*) FROM members WHERE grp = ?1 AND seen_ms > ?2)
         FROM groups WHERE name = ?1",
    )
    .bind(&claim.group)
    .bind(now - ttl_ms())
    .fetch_optional(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if let Some((patterns, kinds, cursor, start_seq, start_ms, last, members)) = row {
        rules::check_member(&claim.group, &patterns, kinds, spec)?;
        let position = Position {
            cursor,
            start_seq,
            start_ms,
        };
        return Ok((position, last, members.max(1) as usize));
    }
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(pos), 0) FROM events")
        .fetch_one(&mut *conn)
        .await
        .map_err(runtime_error)?;
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
    Ok((position, last, 1))
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

/// Whether `s` is a plain ack (no effects), which [`ack_all`] settles.
pub(crate) fn is_plain_ack(s: &Settlement) -> bool {
    matches!(s.outcome, Settled::Outcome(Outcome::Ack)) && s.effects.is_empty()
}

/// Settle plain acks in one statement, each only if it is still its
/// member's current lease (a stale ack changes nothing, as in [`settle`]).
pub(crate) async fn ack_all(conn: &mut SqliteConnection, acks: &[&Settlement]) -> Result<()> {
    if acks.is_empty() {
        return Ok(());
    }
    let list: Vec<(&str, i64, i64, &str)> = acks
        .iter()
        .map(|s| {
            let attempt = s.envelope.attempt() as i64;
            (s.group.as_str(), s.pos, attempt, s.member.as_str())
        })
        .collect();
    let list = serde_json::to_string(&list).map_err(|e| herald::Error::internal(e.to_string()))?;
    sqlx::query(
        "UPDATE deliveries SET state = ?
         FROM (SELECT j.value ->> 0 AS grp, j.value ->> 1 AS pos, j.value ->> 2 AS attempt,
                      j.value ->> 3 AS owner FROM json_each(?) j) AS a
         WHERE deliveries.grp = a.grp AND deliveries.pos = a.pos AND deliveries.state = ?
           AND deliveries.attempt = a.attempt AND deliveries.owner = a.owner",
    )
    .bind(SETTLED)
    .bind(&list)
    .bind(IN_FLIGHT)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
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
    insert_dead_letter(conn, &letter).await?;
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

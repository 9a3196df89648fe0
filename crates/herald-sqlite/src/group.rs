//! Durable consumer groups: leases in the database, so members in any number
//! of tasks and processes share one group.
//!
//! Owns the `groups`, `deliveries` and `members` tables and their SQL, which the
//! writer runs (a member's side is `member.rs`). A group
//! has a cursor (every event at or below it, in commit order `pos`, is
//! settled for the group) and, above it, one `deliveries` row per event a
//! member touched: in flight (leased until its ack deadline), waiting (nacked
//! with a delay) or settled. A member *claims* events in a write transaction
//! — SQLite runs one writer at a time, so claims never race — leasing, per
//! topic and key, only the first unsettled event, so same-key events go to
//! one member at a time and in order; the key's later events come with it
//! unleased (its run), and the ack of each leases the next (`settle`). A lease that ran out is claimable
//! again with `attempt + 1`; after `max_deliver` attempts the event is
//! dead-lettered in the same transaction that settles it. Offsets are
//! committed on ack, so a restarted consumer resumes after its last ack.
//!
//! Does not own the requests' types (`request`), positioning a new group
//! (`log::first_wanted`), the dead-letter row (`log`), or reading a group's
//! state for inspection (`inspect`).

use std::collections::{HashMap, HashSet};

use herald::backend::dead_lettering::Discards;
use herald::backend::group::{
    self as rules, Candidate, CandidateRow, Change, Claimed, Lease, LeaseState, Position, Settled,
};
use herald::{DeadLetter, Envelope, ErrorCode, FailureSource, Outcome, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::conn::{decode_stored, raw_error};
use crate::log::{append, first_wanted, insert_dead_letter};
use crate::request::{Claim, Settlement};

/// Events examined per claim. Reading a row costs about a microsecond
/// (the `events` rows carry their envelopes), so a wider window makes
/// every claim dearer; a narrow one finds short runs of each key (see
/// `rules::plan`).
const WINDOW: i64 = 512;

/// How far the cursor moves between deletes of the delivery rows it
/// passed.
const PRUNE_STEP: i64 = 64;

/// patterns, kinds, cursor, start_seq, start_ms, the log's last pos, live
/// members
type GroupRow = (String, i64, i64, Option<i64>, Option<i64>, i64, i64);
pub(crate) const IN_FLIGHT: i64 = 0;
const SETTLED: i64 = 2;

/// Windows of one transaction's claims, by group: claims that follow in
/// the same transaction (other members', parked ones) plan over the rows
/// the first read, kept up to date with what each leased, instead of
/// reading them again. Valid only while nothing but claims writes a group's
/// deliveries — the writer runs a batch's claims after its other requests —
/// so a transaction starts with an empty one.
#[derive(Default)]
pub(crate) struct Windows(HashMap<String, Window>);

/// Unsettled events after `cursor` through `last`, read once.
struct Window {
    cursor: i64,
    last: i64,
    rows: Vec<Candidate>,
    /// The rows are every unsettled event through this `pos`.
    complete_to: i64,
}

impl Windows {
    /// The group's window after `cursor` through `last`: the one kept, or
    /// read now.
    fn read(
        &mut self,
        conn: &Connection,
        claim: &Claim,
        cursor: i64,
        last: i64,
    ) -> Result<&Window> {
        let kept = self
            .0
            .get(&claim.group)
            .is_some_and(|w| w.cursor == cursor && w.last == last);
        if !kept {
            let rows = window_rows(conn, claim, cursor, last)?;
            let complete_to = match rows.last() {
                Some(row) if rows.len() as i64 == WINDOW => row.0,
                _ => last,
            };
            let rows = rows.into_iter().map(Candidate::from).collect();
            let window = Window {
                cursor,
                last,
                rows,
                complete_to,
            };
            self.0.insert(claim.group.clone(), window);
        }
        Ok(&self.0[&claim.group])
    }

    /// What `plan` leased (until `lease_until`), dead-lettered and passed
    /// over, as the group's next claim in this transaction would read it.
    fn record(&mut self, group: &str, plan: &rules::Plan, lease_until: i64) {
        let Some(w) = self.0.get_mut(group) else {
            return;
        };
        for &(pos, attempt) in &plan.claims {
            if let Ok(i) = w.rows.binary_search_by_key(&pos, |r| r.pos) {
                w.rows[i].lease = Some(Lease {
                    state: LeaseState::InFlight,
                    attempt,
                    until_ms: lease_until,
                });
            }
        }
        let dead: HashSet<i64> = plan.dead.iter().map(|d| d.pos).collect();
        w.cursor = w.cursor.max(plan.cursor);
        let cursor = w.cursor;
        w.rows.retain(|r| r.pos > cursor && !dead.contains(&r.pos));
    }
}

/// Register the group if new (checking a known group follows the same
/// topics), then lease up to `claim.max` events to the member: a window
/// read (or the one `windows` keeps), one statement for the leases and one
/// for their envelopes, however many it takes.
pub(crate) fn claim(conn: &Connection, claim: &Claim, windows: &mut Windows) -> Result<Claimed> {
    let now = chrono::Utc::now().timestamp_millis();
    seen(conn, claim, now)?;
    let (position, last, members) = register(conn, claim, now)?;
    if claim.max == 0 {
        return Ok(Claimed::default());
    }
    let spec = &claim.spec;
    let mut position = position;
    let plan = loop {
        // Settled events are left out, so one held event does not hide what
        // comes after it.
        let window = windows.read(conn, claim, position.cursor, last)?;
        let complete_to = window.complete_to;
        let plan = rules::plan(
            spec,
            &position,
            &window.rows,
            complete_to,
            rules::Share {
                max: claim.max,
                members,
                all_heads: false,
            },
            claim.max_deliver,
            now,
        );
        // A window of only events the group does not follow: read on.
        if plan.claims.is_empty() && plan.cursor == complete_to && complete_to < last {
            apply(conn, claim, &position, &plan)?;
            position.cursor = plan.cursor;
            continue;
        }
        break (plan, complete_to < last);
    };
    let (plan, beyond) = plan;
    let lease_until = now.saturating_add(spec.ack_wait.as_millis().min(i64::MAX as u128) as i64);
    let mut claimed = lease(conn, claim, &plan.claims, lease_until)?;
    // The runs after the heads wait in the member, leased one at a time by
    // the ack before each (`settle`).
    for t in &plan.tails {
        claimed.push((t.pos, stored(conn, t.pos, t.attempt)?));
    }
    apply(conn, claim, &position, &plan)?;
    windows.record(&claim.group, &plan, lease_until);
    Ok(Claimed {
        events: claimed,
        more: plan.more || beyond,
    })
}

/// Up to [`WINDOW`] events after `cursor` through `last`, in `pos` order,
/// with the group's records of them, leaving out those settled for the
/// group (so one held event does not hide what comes after it).
fn window_rows(
    conn: &Connection,
    claim: &Claim,
    cursor: i64,
    last: i64,
) -> Result<Vec<CandidateRow>> {
    let mut q = conn
        .prepare_cached(
            "SELECT e.pos, e.topic, e.seq, e.key, e.kind, e.priority, e.created_ms,
                    e.expires_ms, d.state, d.attempt, d.lease_until_ms
             FROM events e LEFT JOIN deliveries d ON d.grp = ? AND d.pos = e.pos
             WHERE e.pos > ? AND e.pos <= ? AND (d.state IS NULL OR d.state <> ?)
             ORDER BY e.pos LIMIT ?",
        )
        .map_err(raw_error)?;
    let rows = q
        .query_map(params![&claim.group, cursor, last, SETTLED, WINDOW], |r| {
            CandidateRow::try_from(r)
        })
        .and_then(|rows| rows.collect())
        .map_err(raw_error)?;
    Ok(rows)
}

/// Lease `claims` (`(pos, attempt)`) to the member until `lease_until`,
/// and read their envelopes; in `claims`' order.
fn lease(
    conn: &Connection,
    claim: &Claim,
    claims: &[(i64, i64)],
    lease_until: i64,
) -> Result<Vec<(i64, Envelope)>> {
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
             lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
             first_failed_ms = coalesce(deliveries.first_failed_ms,
                 CASE WHEN deliveries.state = 0 THEN deliveries.lease_until_ms END)",
        )
        .map_err(raw_error)?;
    let mut out = Vec::with_capacity(claims.len());
    for &(pos, attempt) in claims {
        upsert
            .execute(params![
                &claim.group,
                pos,
                IN_FLIGHT,
                attempt,
                lease_until,
                &claim.member
            ])
            .map_err(raw_error)?;
        out.push((pos, stored(conn, pos, attempt)?));
    }
    Ok(out)
}

/// Dead-letter what `plan` dooms and move the group's cursor.
fn apply(conn: &Connection, claim: &Claim, position: &Position, plan: &rules::Plan) -> Result<()> {
    for d in &plan.dead {
        let env = stored(conn, d.pos, d.attempt)?;
        let why = (d.code, d.reason.clone(), d.source);
        dead_letter(conn, &claim.discards, (&claim.group, d.pos), &env, why)?;
    }
    if plan.cursor > position.cursor {
        conn.prepare_cached("UPDATE groups SET cursor = ? WHERE name = ?")
            .and_then(|mut q| q.execute(params![plan.cursor, &claim.group]))
            .map_err(raw_error)?;
        // Rows at or below the cursor are never read again; clearing them
        // once per PRUNE_STEP events saves a statement on most claims.
        if plan.cursor / PRUNE_STEP > position.cursor / PRUNE_STEP {
            conn.prepare_cached("DELETE FROM deliveries WHERE grp = ? AND pos <= ?")
                .and_then(|mut q| q.execute(params![&claim.group, plan.cursor]))
                .map_err(raw_error)?;
        }
    }
    Ok(())
}

/// The stored envelope at `pos`, as delivery `attempt`.
fn stored(conn: &Connection, pos: i64, attempt: i64) -> Result<Envelope> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT envelope FROM events WHERE pos = ?")
        .and_then(|mut q| q.query_row([pos], |r| r.get(0)).optional())
        .map_err(raw_error)?;
    let bytes =
        bytes.ok_or_else(|| herald::Error::internal(format!("event {pos} left the log")))?;
    Ok(decode_stored(&bytes)?.with_attempt(attempt.clamp(1, u32::MAX as i64) as u32))
}

/// Record that the member claims now (when it asks to: it refreshes its
/// row every fifth of [`rules::MEMBER_TTL`]); a member registering also clears
/// out the group's members not seen for [`rules::MEMBER_TTL`].
fn seen(conn: &Connection, claim: &Claim, now: i64) -> Result<()> {
    if !claim.refresh {
        return Ok(());
    }
    if claim.max == 0 {
        conn.prepare_cached("DELETE FROM members WHERE grp = ? AND seen_ms <= ?")
            .and_then(|mut q| q.execute(params![&claim.group, now - ttl_ms()]))
            .map_err(raw_error)?;
    }
    conn.prepare_cached(
        "INSERT INTO members (grp, id, seen_ms) VALUES (?, ?, ?)
         ON CONFLICT (grp, id) DO UPDATE SET seen_ms = excluded.seen_ms",
    )
    .and_then(|mut q| q.execute(params![&claim.group, &claim.member, now]))
    .map_err(raw_error)?;
    Ok(())
}

fn ttl_ms() -> i64 {
    rules::MEMBER_TTL.as_millis() as i64
}

/// The group's cursor and start filters (registering it on first use),
/// the log's last `pos` and the group's live members.
fn register(conn: &Connection, claim: &Claim, now: i64) -> Result<(Position, i64, usize)> {
    let spec = &claim.spec;
    let row: Option<GroupRow> = conn
        .prepare_cached(
            "SELECT patterns, kinds, cursor, start_seq, start_ms,
                    (SELECT coalesce(max(pos), 0) FROM events),
                    (SELECT count(*) FROM members WHERE grp = ?1 AND seen_ms > ?2)
             FROM groups WHERE name = ?1",
        )
        .and_then(|mut q| {
            q.query_row(params![&claim.group, now - ttl_ms()], |r| {
                GroupRow::try_from(r)
            })
            .optional()
        })
        .map_err(raw_error)?;
    if let Some((patterns, kinds, cursor, start_seq, start_ms, last, members)) = row {
        rules::check_member(&claim.group, &patterns, kinds, spec)?;
        let position = Position {
            cursor,
            start_seq,
            start_ms,
        };
        return Ok((position, last, members.max(1) as usize));
    }
    let last: i64 = conn
        .query_row("SELECT coalesce(max(pos), 0) FROM events", [], |r| r.get(0))
        .map_err(raw_error)?;
    let mut position = Position::new(&spec.start, last);
    if position.cursor < last {
        // Start just below the first event the group may want, found by
        // index per matching topic, so no claim walks the events of topics
        // it does not follow (DESIGN.md §10: positioning is a lookup).
        position.cursor = match first_wanted(conn, spec, &position)? {
            Some(pos) => (pos - 1).max(position.cursor),
            None => last,
        };
    }
    conn.execute(
        "INSERT INTO groups (name, patterns, kinds, cursor, start_seq, start_ms) VALUES (?, ?, ?, ?, ?, ?)",
        params![
            &claim.group,
            rules::patterns_text(spec),
            rules::kind_bits(spec),
            position.cursor,
            position.start_seq,
            position.start_ms
        ],
    )
    .map_err(raw_error)?;
    Ok((position, last, 1))
}

/// What a settlement did.
pub(crate) enum Applied {
    /// Recorded; the `pos` of the last effect appended, if any.
    Yes(Option<i64>),
    /// An ack came after its lease ran out and the event was claimed
    /// again: nothing was written (the new delivery produces any effects),
    /// and the caller must not count the message as handled, since the
    /// group hands it out again.
    Stale,
}

/// Settle `s` if it is still its member's current lease: whether it was.
fn ack(conn: &Connection, s: &Settlement) -> Result<bool> {
    let acked = conn
        .prepare_cached(
            "UPDATE deliveries SET state = ?
             WHERE grp = ? AND pos = ? AND state = ? AND attempt = ? AND owner = ?",
        )
        .and_then(|mut q| {
            q.execute(params![
                SETTLED,
                &s.group,
                s.pos,
                IN_FLIGHT,
                s.envelope.attempt() as i64,
                &s.member
            ])
        })
        .map_err(raw_error)?;
    Ok(acked > 0)
}

/// Lease `next`, the key's next event, to the member whose ack `s` just
/// applied, as a claim would lease it: only if it is not settled, still at
/// the attempt before, and no one holds it.
fn lease_next(conn: &Connection, s: &Settlement, next: rules::Next) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
         lease_until_ms = excluded.lease_until_ms, owner = excluded.owner,
         first_failed_ms = coalesce(deliveries.first_failed_ms,
             CASE WHEN deliveries.state = ?3 THEN deliveries.lease_until_ms END)
         WHERE deliveries.state <> ?7 AND deliveries.attempt = excluded.attempt - 1
           AND deliveries.lease_until_ms <= ?8",
    )
    .and_then(|mut q| {
        q.execute(params![
            &s.group,
            next.pos,
            IN_FLIGHT,
            next.attempt,
            next.until_ms,
            &s.member,
            SETTLED,
            chrono::Utc::now().timestamp_millis()
        ])
    })
    .map_err(raw_error)?;
    Ok(())
}

/// Record a settlement; one that comes after the lease ran out and the event
/// was claimed again (by anyone) is stale and ignored, effects and all (an
/// ack says so: [`Applied::Stale`]).
pub(crate) fn settle(conn: &Connection, s: &Settlement, dedupe_window_ms: i64) -> Result<Applied> {
    let attempt = s.envelope.attempt() as i64;
    if let Settled::Outcome(Outcome::Ack) = s.outcome {
        // The common case in one statement: settle only our current lease.
        let acked = ack(conn, s)?;
        if let Some(next) = s.next.filter(|_| acked) {
            lease_next(conn, s, next)?;
        }
        if !acked {
            return Ok(Applied::Stale);
        }
        if s.effects.is_empty() {
            return Ok(Applied::Yes(None));
        }
        let appended = append(conn, &[&s.effects], dedupe_window_ms)?;
        return Ok(Applied::Yes(appended.last_pos));
    }
    let current: Option<(i64, i64, Option<String>)> = conn
        .prepare_cached("SELECT state, attempt, owner FROM deliveries WHERE grp = ? AND pos = ?")
        .and_then(|mut q| {
            q.query_row(params![&s.group, s.pos], |r| {
                <(i64, i64, Option<String>)>::try_from(r)
            })
            .optional()
        })
        .map_err(raw_error)?;
    if current != Some((IN_FLIGHT, attempt, Some(s.member.clone()))) {
        return Ok(Applied::Yes(None));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let at = (s.group.as_str(), s.envelope.topic().as_str());
    match rules::change(&s.outcome, attempt, s.max_deliver, now, at) {
        Change::Settle => {}
        Change::Wait {
            attempt,
            until_ms,
            failed_ms,
        } => set_state(conn, s, attempt, until_ms, failed_ms)?,
        Change::DeadLetter {
            code,
            reason,
            source,
        } => dead_letter(
            conn,
            &s.discards,
            (&s.group, s.pos),
            &s.envelope,
            (code, reason, source),
        )?,
    }
    Ok(Applied::Yes(None))
}

/// Put a delivery back to waiting; `failed_at` records the first failure
/// if none is yet.
fn set_state(
    conn: &Connection,
    s: &Settlement,
    attempt: i64,
    until: i64,
    failed_at: Option<i64>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?, attempt = ?, lease_until_ms = ?,
         first_failed_ms = coalesce(first_failed_ms, ?) WHERE grp = ? AND pos = ?",
    )
    .and_then(|mut q| {
        q.execute(params![
            LeaseState::Waiting.code(),
            attempt,
            until,
            failed_at,
            &s.group,
            s.pos
        ])
    })
    .map_err(raw_error)?;
    Ok(())
}

/// Dead-letter `env` (at `pos`) for `group`, unless `discards` says
/// discard it, and settle its delivery, in the caller's transaction: both
/// happen or neither.
fn dead_letter(
    conn: &Connection,
    discards: &Discards,
    (group, pos): (&str, i64),
    env: &Envelope,
    (code, reason, source): (ErrorCode, String, FailureSource),
) -> Result<()> {
    let first: Option<Option<i64>> = conn
        .prepare_cached("SELECT first_failed_ms FROM deliveries WHERE grp = ? AND pos = ?")
        .and_then(|mut q| q.query_row(params![group, pos], |r| r.get(0)).optional())
        .map_err(raw_error)?;
    let first = first
        .flatten()
        .and_then(chrono::DateTime::from_timestamp_millis);
    let letter = DeadLetter::new(env.clone(), source, code, reason)
        .with_group(group.to_owned())
        .with_first_failure(first);
    if !discards.discard(&letter) {
        insert_dead_letter(conn, &letter)?;
    }
    conn.prepare_cached(
        "INSERT INTO deliveries (grp, pos, state, attempt, lease_until_ms, owner) VALUES (?, ?, ?, ?, 0, NULL)
         ON CONFLICT (grp, pos) DO UPDATE SET state = excluded.state, attempt = excluded.attempt",
    )
    .and_then(|mut q| q.execute(params![group, pos, SETTLED, env.attempt() as i64]))
    .map_err(raw_error)?;
    Ok(())
}

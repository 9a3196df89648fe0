//! Durable consumer groups over a stored log: the rules every store shares.
//!
//! A group has a *cursor* (every event at or below it, in the log's commit
//! order `pos`, is settled for the group) and, above it, one delivery record
//! per event a member touched: in flight (leased until its ack deadline),
//! waiting (nacked or deferred until a time) or settled. This module owns
//! what a member may claim next ([`plan`]: per topic and key only the first
//! unsettled event, highest priority first, expired leases again with
//! `attempt + 1`, dead letters past `max_deliver`), what a settlement does to
//! a delivery ([`change`]), the codes stores keep kinds, priorities and
//! lease states under, and the member [`Subscription`] ([`subscribe`]) that
//! claims, hands out and settles deliveries through a store's
//! [`GroupMember`].
//!
//! It owns no storage: where cursors and leases live, and how a claim is made
//! atomic against other members and processes, is the store's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream;
use tokio::sync::{oneshot, watch, Notify};

use crate::backend::subscription::{CloseHandle, StartPosition, SubscribeSpec, Subscription};
use crate::backend::transport::DeliveryState;
use crate::model::dead_letter::FailureSource;
use crate::model::delivery::{BoxFuture, Delivery, Outcome, Settle};
use crate::model::envelope::{Envelope, Kind, Priority};
use crate::model::error::{Error, ErrorCode, Result};

/// How long a member counts as live for the fair share of a claim (see
/// [`plan`]) after its last claim. An idle member claims at least every
/// [`IDLE_MAX`]; one at its `max_in_flight` does not claim, and is not
/// counted once this passes (it could not take more anyway).
pub const MEMBER_TTL: Duration = Duration::from_secs(5);

/// How a store keeps `kind`.
pub fn kind_code(k: Kind) -> i64 {
    match k {
        Kind::Event => 0,
        Kind::Command => 1,
        Kind::Response => 2,
        Kind::Intent => 3,
    }
}

/// The kind kept as `code`.
pub fn kind_of(code: i64) -> Kind {
    match code {
        1 => Kind::Command,
        2 => Kind::Response,
        3 => Kind::Intent,
        _ => Kind::Event,
    }
}

/// How a store keeps `priority`: higher is more urgent.
pub fn priority_code(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

/// The kinds a group follows, one bit each (kept with the group so every
/// member must follow the same).
pub fn kind_bits(spec: &SubscribeSpec) -> i64 {
    [Kind::Event, Kind::Command, Kind::Response, Kind::Intent]
        .iter()
        .enumerate()
        .map(|(i, k)| (spec.kinds.allows(*k) as i64) << i)
        .sum()
}

/// The patterns a group follows, sorted and space-separated.
pub fn patterns_text(spec: &SubscribeSpec) -> String {
    let mut p: Vec<&str> = spec.patterns.iter().map(|p| p.as_str()).collect();
    p.sort_unstable();
    p.join(" ")
}

/// A stored group's [`GroupInfo`](crate::GroupInfo): `patterns` as
/// [`patterns_text`] keeps them, `topics` every topic with events,
/// `unsettled` each topic's unsettled events of the group as (count, lowest
/// `seq`). A topic the group follows with nothing unsettled is settled
/// through its last `seq`.
pub fn info(
    name: &str,
    patterns: &str,
    topics: &[crate::TopicInfo],
    unsettled: &HashMap<String, (u64, u64)>,
) -> Result<crate::GroupInfo> {
    let followed: Vec<crate::Pattern> = patterns
        .split_whitespace()
        .map(crate::Pattern::new)
        .collect::<Result<_>>()?;
    let mut standing: Vec<crate::GroupTopic> = topics
        .iter()
        .filter(|t| followed.iter().any(|p| p.matches(&t.topic)))
        .map(|t| {
            let (lag, acked_through) = match unsettled.get(t.topic.as_str()) {
                Some((n, lowest)) => (*n, lowest.saturating_sub(1)),
                None => (0, t.last_seq),
            };
            crate::GroupTopic::new(t.topic.clone(), acked_through, t.last_seq, lag)
        })
        .collect();
    standing.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    let patterns = followed.iter().map(|p| p.to_string()).collect();
    Ok(crate::GroupInfo::new(name, patterns, standing))
}

/// Refuse a member of `group` (which follows `patterns` and `kinds`, as
/// stored) when `spec` follows other topics or kinds.
pub fn check_member(group: &str, patterns: &str, kinds: i64, spec: &SubscribeSpec) -> Result<()> {
    if patterns != patterns_text(spec) || kinds != kind_bits(spec) {
        return Err(Error::validation(format!(
            "group {group:?} follows `{patterns}`; a member cannot follow `{}` (or other kinds)",
            patterns_text(spec)
        )));
    }
    Ok(())
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held by a member until `until_ms`.
    InFlight,
    /// Handed back; claimable from `until_ms`.
    Waiting,
    /// Acked or dead-lettered.
    Settled,
}

impl LeaseState {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            LeaseState::InFlight => 0,
            LeaseState::Waiting => 1,
            LeaseState::Settled => 2,
        }
    }

    /// The state stored as `code`.
    pub fn from_code(code: i64) -> Option<LeaseState> {
        match code {
            0 => Some(LeaseState::InFlight),
            1 => Some(LeaseState::Waiting),
            2 => Some(LeaseState::Settled),
            _ => None,
        }
    }
}

/// A group's delivery record of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Where it stands.
    pub state: LeaseState,
    /// Deliveries so far.
    pub attempt: i64,
    /// In flight until, or waiting until (ms since the epoch).
    pub until_ms: i64,
}

impl Lease {
    /// The record in a row's nullable state, attempt and until columns.
    pub fn from_columns(
        state: Option<i64>,
        attempt: Option<i64>,
        until_ms: Option<i64>,
    ) -> Option<Lease> {
        Some(Lease {
            state: LeaseState::from_code(state?)?,
            attempt: attempt?,
            until_ms: until_ms?,
        })
    }
}

/// Where a group reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Every event at or below this `pos` is settled for the group.
    pub cursor: i64,
    /// Only events with `seq` at least this (a `Seq` start).
    pub start_seq: Option<i64>,
    /// Only events created at or after this (a `Time` start, ms).
    pub start_ms: Option<i64>,
}

impl Position {
    /// A new group's position for `start`, when the log's last `pos` is
    /// `last_pos`.
    pub fn new(start: &StartPosition, last_pos: i64) -> Position {
        let (cursor, start_seq, start_ms) = match start {
            StartPosition::Latest => (last_pos, None, None),
            StartPosition::Earliest => (0, None, None),
            StartPosition::Seq(s) => (0, Some((*s).min(i64::MAX as u64) as i64), None),
            StartPosition::Time(t) => (0, None, Some(t.timestamp_millis())),
        };
        Position {
            cursor,
            start_seq,
            start_ms,
        }
    }
}

/// An event above the cursor, without its envelope, and the group's record
/// of it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its place in the log.
    pub pos: i64,
    /// Its topic.
    pub topic: String,
    /// Its `seq` in the topic.
    pub seq: i64,
    /// Its ordering key.
    pub key: Option<String>,
    /// [`kind_code`] of its kind.
    pub kind: i64,
    /// [`priority_code`] of its priority.
    pub priority: i64,
    /// When it was created (ms).
    pub created_ms: i64,
    /// When it expires (ms), if it does.
    pub expires_ms: Option<i64>,
    /// The group's delivery record, if any.
    pub lease: Option<Lease>,
}

/// A [`Candidate`] as a store reads it in one row: pos, topic, seq, key,
/// kind, priority, created_ms, expires_ms, then the delivery's state,
/// attempt and until_ms (all `None` without a delivery record).
pub type CandidateRow = (
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

impl From<CandidateRow> for Candidate {
    fn from(row: CandidateRow) -> Candidate {
        let (pos, topic, seq, key, kind, priority, created_ms, expires_ms, state, attempt, until) =
            row;
        Candidate {
            pos,
            topic,
            seq,
            key,
            kind,
            priority,
            created_ms,
            expires_ms,
            lease: Lease::from_columns(state, attempt, until),
        }
    }
}

/// An event to dead-letter instead of delivering.
#[derive(Debug, Clone, PartialEq)]
pub struct Doomed {
    /// The event.
    pub pos: i64,
    /// Deliveries it had.
    pub attempt: i64,
    /// Why, as a code.
    pub code: ErrorCode,
    /// Why.
    pub reason: String,
    /// What failed.
    pub source: FailureSource,
}

/// How much one claim may take: at most `max` events (the member's free
/// capacity), and at most its fair share of the claimable flows among the
/// group's live `members` (see [`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The member's room.
    pub max: usize,
    /// The group's members seen claiming within [`MEMBER_TTL`].
    pub members: usize,
    /// Plan every claimable head (up to `max`), each with the run it would
    /// have as one of a fair share, and let the store lease a fair share of
    /// them: a store whose claims run at once (PostgreSQL) skips the heads
    /// another claim is leasing and takes the next.
    pub all_heads: bool,
}

/// The most events of one key a claim gives one member at once (its head
/// and the run after it).
pub const RUN_MAX: usize = 64;

/// A claim's runs hold at most this many events per event of room it has
/// (runs are not leased, so they take no room; this bounds what a member
/// buffers).
pub const RUN_ROOM: usize = 4;

/// A later event of a key claimed with the key's first unsettled event
/// (its run's head). Only the head is leased: the run waits in the member,
/// which hands its events out one at a time, and each is leased by the ack
/// of the one before it ([`Next`]). A store returns a tail only with its
/// head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The event.
    pub pos: i64,
    /// The attempt it will be delivered as.
    pub attempt: i64,
    /// Its run's head.
    pub head: i64,
}

/// The next event of a key's run, held by the member that acks the event
/// before it: the store leases it to that member in the ack's transaction,
/// if the ack applies, as a claim would (not settled, still at the attempt
/// before, no live lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The event.
    pub pos: i64,
    /// The attempt it is delivered as.
    pub attempt: i64,
    /// Its lease's end (ms).
    pub until_ms: i64,
}

/// What one claim does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Events to lease to the member, as `(pos, attempt)`: every keyless
    /// one and the head of each key, in the order they are handed out.
    pub claims: Vec<(i64, i64)>,
    /// The runs after the keyed heads, in `pos` order per key (returned,
    /// not leased).
    pub tails: Vec<Tail>,
    /// Events to dead-letter (and settle) in the same transaction.
    pub dead: Vec<Doomed>,
    /// The new cursor (the old one when it does not move).
    pub cursor: i64,
    /// Whether more events were claimable than the claim took.
    pub more: bool,
}

/// What a claim gave a member.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The events: `pos` and envelope (with the `attempt` it is delivered
    /// as): the leased heads, then the runs after them ([`Plan::tails`],
    /// not leased), each run in `pos` order.
    pub events: Vec<(i64, Envelope)>,
    /// Whether a claim now may find more (claim again before waiting for
    /// a change).
    pub more: bool,
}

/// A topic and key (keyless events of a topic form one flow).
type Flow<'a> = (&'a str, Option<&'a str>);

/// A claimable event: pos, priority, attempt.
type Claimable = (i64, i64, i64);

/// Decide a claim of up to `max` events from `rows`. What is claimable
/// comes in *heads*: every keyless event, and per topic and key the first
/// unsettled event, with the *run* of the key's later events that are free
/// too (no live lease, none waiting before them). A claim takes at most a
/// fair share of the heads — their count divided by the group's live
/// `members`, rounded up, at least one — so members claiming in turn split
/// a backlog's keys evenly and a lone member takes all it has room for;
/// each keyed head comes with up to as much of its run as the room left
/// over gives every head it takes alike (at most [`RUN_MAX`] events a key).
/// The member hands a run's events out one at a time, each once the one
/// before it is acked, so one member keeps a key's order without a claim
/// per event (see [`subscribe`]).
///
/// From `rows`: events after `position.cursor`, in `pos` order, with the
/// group's records, complete through `complete_to` except for events the
/// store left out because they are settled for the group or of topics it
/// does not follow (so a store need not read past a run of settled events
/// behind one held event). Among heads, the highest priority first, then
/// the oldest; priority never reorders a key. An expired lease is
/// claimable again with `attempt + 1`, or dead-lettered once it had
/// `max_deliver` attempts (a key's later event only once it is the key's
/// first); an expired event is dead-lettered. The cursor moves over the
/// settled (or unwanted) prefix.
pub fn plan<'a>(
    spec: &SubscribeSpec,
    position: &Position,
    rows: impl IntoIterator<Item = &'a Candidate>,
    complete_to: i64,
    share: Share,
    max_deliver: u32,
    now_ms: i64,
) -> Plan {
    let Share {
        max,
        members,
        all_heads,
    } = share;
    // The first event that is not settled: the cursor stops below it.
    let mut first_open: Option<i64> = None;
    // Keys with an unsettled event seen; of those, the ones whose run is
    // still open (its head claimable, nothing held or waiting since).
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut open: HashSet<(&str, &str)> = HashSet::new();
    // Claimable events per flow, in pos order.
    let mut flows: HashMap<Flow<'a>, VecDeque<Claimable>> = HashMap::new();
    let mut dead = Vec::new();
    for row in rows {
        let wanted = spec.wants(&row.topic, kind_of(row.kind))
            && position.start_seq.is_none_or(|s| row.seq >= s)
            && position.start_ms.is_none_or(|t| row.created_ms >= t);
        let settled = matches!(row.lease, Some(l) if l.state == LeaseState::Settled);
        if !wanted || settled {
            continue;
        }
        let flow_key = row.key.as_deref().map(|k| (row.topic.as_str(), k));
        // Whether an earlier event of its key is unsettled.
        let behind = flow_key.is_some_and(|f| !seen.insert(f));
        let attempt = match row.lease {
            Some(l) if l.until_ms > now_ms => {
                first_open.get_or_insert(row.pos);
                if let Some(f) = flow_key {
                    open.remove(&f);
                }
                continue;
            }
            Some(l) if l.state == LeaseState::InFlight && l.attempt >= max_deliver as i64 => {
                if let Some(f) = flow_key {
                    if behind {
                        // Its turn comes when it is its key's first.
                        first_open.get_or_insert(row.pos);
                        open.remove(&f);
                        continue;
                    }
                    // Settled by this claim: the key's next is its first.
                    seen.remove(&f);
                }
                dead.push(Doomed {
                    pos: row.pos,
                    attempt: l.attempt,
                    code: ErrorCode::Timeout,
                    reason: format!(
                        "gave up after {} attempts: not settled within the ack wait",
                        l.attempt
                    ),
                    source: FailureSource::Handler,
                });
                continue;
            }
            Some(l) => l.attempt + 1,
            None => 1,
        };
        first_open.get_or_insert(row.pos);
        if row.expires_ms.is_some_and(|t| t <= now_ms) {
            dead.push(Doomed {
                pos: row.pos,
                attempt,
                code: ErrorCode::Timeout,
                reason: "expired before delivery".to_owned(),
                source: FailureSource::Expired,
            });
            if let Some(f) = flow_key.filter(|_| !behind) {
                seen.remove(&f);
            }
            continue;
        }
        if let Some(f) = flow_key {
            if !behind {
                open.insert(f);
            } else if !open.contains(&f) {
                continue;
            }
        }
        flows
            .entry((row.topic.as_str(), row.key.as_deref()))
            .or_default()
            .push_back((row.pos, row.priority, attempt));
    }

    // Heads: every keyless event, the first of each key's run.
    let mut flows: Vec<(bool, VecDeque<Claimable>)> = flows
        .into_iter()
        .map(|((_, key), events)| (key.is_some(), events))
        .collect();
    let claimable: usize = flows
        .iter()
        .map(|(keyed, events)| if *keyed { 1 } else { events.len() })
        .sum();
    let fair = max.min(claimable.div_ceil(members.max(1)).max(1));
    let take = if all_heads { max.min(claimable) } else { fair };
    // The run each keyed head brings: a fair share of heads' room for
    // runs, spread over them alike.
    let run = (max.saturating_mul(RUN_ROOM) / fair.max(1)).min(RUN_MAX - 1);
    // Highest priority first, oldest first; a flow only ever offers its head.
    let mut heads: BinaryHeap<(i64, Reverse<i64>, usize)> = flows
        .iter()
        .enumerate()
        .filter_map(|(i, (_, f))| f.front().map(|(pos, prio, _)| (*prio, Reverse(*pos), i)))
        .collect();
    let mut claims = Vec::new();
    let mut tails = Vec::new();
    while claims.len() < take {
        let Some((_, _, i)) = heads.pop() else { break };
        let (keyed, flow) = &mut flows[i];
        let Some((pos, _, attempt)) = flow.pop_front() else {
            continue;
        };
        claims.push((pos, attempt));
        if *keyed {
            tails.extend(flow.drain(..).take(run).map(|(tail, _, attempt)| Tail {
                pos: tail,
                attempt,
                head: pos,
            }));
        } else if let Some((next_pos, next_prio, _)) = flow.front() {
            heads.push((*next_prio, Reverse(*next_pos), i));
        }
    }
    let cursor = match first_open {
        Some(pos) => pos - 1,
        None => complete_to,
    };
    Plan {
        more: claimable > claims.len(),
        claims,
        tails,
        dead,
        cursor: cursor.max(position.cursor),
    }
}

/// How a member settled a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The application's outcome.
    Outcome(Outcome),
    /// Claimed but never handed to the application (the member closed).
    Released,
}

/// What a settlement does to an in-flight delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Settled for the group (acked).
    Settle,
    /// Back to waiting, claimable from `until_ms`; `attempt` is what the
    /// next claim counts from; `failed_ms` is a failure's time, recorded
    /// if none is yet (a dead letter's first failure).
    Wait {
        /// Attempts counted so far.
        attempt: i64,
        /// Claimable from (ms).
        until_ms: i64,
        /// When it failed, for a failure.
        failed_ms: Option<i64>,
    },
    /// Dead-letter it and settle it, in one transaction.
    DeadLetter {
        /// Why, as a code.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
}

/// What `settled` does to delivery `attempt` of an event, at `now_ms`:
/// releases and deferrals do not count an attempt, a nack does (and
/// dead-letters at `max_deliver`), a term dead-letters.
pub fn change(settled: &Settled, attempt: i64, max_deliver: u32, now_ms: i64) -> Change {
    let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
    match settled {
        Settled::Outcome(Outcome::Ack) => Change::Settle,
        Settled::Released => Change::Wait {
            attempt: attempt - 1,
            until_ms: 0,
            failed_ms: None,
        },
        Settled::Outcome(Outcome::Defer { delay }) => Change::Wait {
            attempt: attempt - 1,
            until_ms: now_ms.saturating_add(ms(*delay)),
            failed_ms: None,
        },
        Settled::Outcome(Outcome::Nack { reason, .. }) if attempt >= max_deliver as i64 => {
            Change::DeadLetter {
                code: ErrorCode::Internal,
                reason: format!(
                    "gave up after {attempt} attempts: {}",
                    reason.as_deref().unwrap_or("nacked")
                ),
            }
        }
        Settled::Outcome(Outcome::Nack { delay, .. }) => Change::Wait {
            attempt,
            until_ms: now_ms.saturating_add(delay.map_or(0, ms)),
            failed_ms: Some(now_ms),
        },
        Settled::Outcome(Outcome::Term { code, reason }) => Change::DeadLetter {
            code: *code,
            reason: reason.clone(),
        },
    }
}

/// Where the event at `pos` stands for a group, from what a store read in
/// one snapshot: the group's cursor, whether the group dead-lettered it,
/// and the group's delivery record of it.
pub fn delivery_state(
    pos: i64,
    cursor: i64,
    dead_lettered: bool,
    lease: Option<Lease>,
    now_ms: i64,
) -> DeliveryState {
    if dead_lettered {
        return DeliveryState::DeadLettered;
    }
    if pos <= cursor {
        return DeliveryState::Acked;
    }
    match lease {
        Some(l) if l.state == LeaseState::InFlight && l.until_ms > now_ms => {
            DeliveryState::InFlight {
                attempt: l.attempt.clamp(1, u32::MAX as i64) as u32,
            }
        }
        Some(l) if l.state == LeaseState::Settled => DeliveryState::Acked,
        _ => DeliveryState::Pending,
    }
}

/// The error of an ack with effects that came after its lease ran out:
/// the message was (or will be) delivered again, and the effects were not
/// written.
pub fn lease_lost() -> Error {
    Error::new(
        ErrorCode::Unavailable,
        "the lease ran out before the ack: the message was redelivered, \
         and its effects were not written",
    )
}

/// Longest an idle member waits before claiming again: leases that ran out
/// and delays that passed are found by claims.
pub const IDLE_MAX: Duration = Duration::from_millis(250);

/// What a store's [`GroupMember::changes`] usually is: a future that
/// completes when `committed` (new events) or `groups` (settlements)
/// changes after this call, or after [`IDLE_MAX`].
pub fn changes(
    mut committed: watch::Receiver<i64>,
    mut groups: watch::Receiver<u64>,
) -> BoxFuture<'static, ()> {
    committed.borrow_and_update();
    groups.borrow_and_update();
    Box::pin(async move {
        tokio::select! {
            _ = committed.changed() => {}
            _ = groups.changed() => {}
            _ = tokio::time::sleep(IDLE_MAX) => {}
        }
    })
}

/// A settlement on its way: answers once it is durable (see
/// [`GroupMember::settle`]).
pub type Settling = BoxFuture<'static, Result<()>>;

/// A store's side of one group member: claims and settlements made atomic
/// against every other member, in any process.
pub trait GroupMember: Send + Sync + 'static {
    /// Register the group if new (checking that a known group follows the
    /// same topics), then lease up to `max` events to this member.
    ///
    /// When nothing is claimable, a store may hold the claim and answer it
    /// once something is (SQLite leases a new event to a waiting member in
    /// the transaction that appends it) instead of answering at once with
    /// nothing; such a store answers at once, with what it has, after
    /// [`interrupt`](Self::interrupt).
    fn claim(&self, max: usize) -> BoxFuture<'_, Result<Claimed>>;

    /// The member's subscription closed or was dropped: a claim the store
    /// holds while nothing is claimable answers now, and later ones answer
    /// at once. Stores whose claims always answer at once need not
    /// implement it.
    fn interrupt(&self) {}

    /// Apply a settlement of the delivery of `pos`; one that comes after its
    /// lease ran out and the event was claimed again is ignored. An ack with
    /// `effects` appends them in the same transaction, or fails (and writes
    /// nothing) when the lease ran out.
    ///
    /// An ack with a `next` leases that event to the member in the same
    /// transaction when the ack applies (see [`Next`]).
    ///
    /// Two steps: the future answers once the settlement is queued, with a
    /// future that answers once it is durable. The store applies a
    /// member's settlements in the order they were queued, so a settlement
    /// queued after another is never durable without it (a failed one
    /// aside): the member hands out a key's next event once the ack of the
    /// one before is queued.
    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        settled: Settled,
        effects: Vec<Envelope>,
        next: Option<Next>,
    ) -> BoxFuture<'_, Result<Settling>>;

    /// A future that completes when a claim may find something it would
    /// not find now (new events, a settlement, time passing). Changes from
    /// the call on count, so call it before claiming.
    fn changes(&self) -> BoxFuture<'static, ()>;

    /// Whether the store is closed.
    fn is_closed(&self) -> bool;

    /// How long a lease lasts.
    fn ack_wait(&self) -> Duration;

    /// The most deliveries the member holds at once
    /// ([`SubscribeSpec::max_in_flight`]).
    fn max_in_flight(&self) -> usize;

    /// A count the store raises each time it deletes events (retention):
    /// a member hands back what it claimed before and has not handed out
    /// yet, as it may be gone, and claims again.
    fn pruned(&self) -> u64;
}

/// A member's subscription: claims events through `member` (after
/// registering the group), hands them out one by one, and settles them
/// through `member`.
///
/// A member holds at most [`GroupMember::max_in_flight`] deliveries at once
/// (claimed and not yet settled): each claim asks for what is free of it,
/// and a member with none free waits for a settlement. A claim runs while
/// the member hands out what it holds. Of a key's run (see [`plan`]) the
/// member hands out one event at a time: the next once the ack of the one
/// before is queued (the store applies it first); any other outcome hands
/// the rest of the run back. Claimed events not handed out while at least
/// half their lease is left are handed back, as is everything claimed but
/// not delivered when the subscription closes or is dropped — a claim still
/// running when the stream is dropped included — and when the store
/// deleted events (retention) since the claim: a member never hands out an
/// event whose lease is nearly over or that may be gone, and a dropped
/// member's events reach the others at once, not after their leases.
pub async fn subscribe(member: Arc<dyn GroupMember>) -> Result<Subscription> {
    member.claim(0).await?;
    let state = Arc::new(MemberState {
        member,
        closed: AtomicBool::new(false),
        wake: Notify::new(),
        held: AtomicUsize::new(0),
        freed: Notify::new(),
        buffer: std::sync::Mutex::new(Buffer::default()),
        ready: Notify::new(),
    });
    let close = {
        let state = state.clone();
        CloseHandle::new(move || {
            state.closed.store(true, Ordering::Release);
            state.wake.notify_waiters();
        })
    };
    let member = Member {
        state,
        claim: None,
        idle: None,
    };
    let deliveries = stream::unfold(member, |mut m| async move {
        m.next().await.map(|next| (next, m))
    });
    Ok(Subscription::new(Box::pin(deliveries), close))
}

/// A member's stream: its state, the claim it is running and, when the
/// last claim found all there was, the change the next one waits for.
/// Dropped, it hands back what it holds and what its claim leases.
struct Member {
    state: Arc<MemberState>,
    claim: Option<PendingClaim>,
    idle: Option<BoxFuture<'static, ()>>,
}

impl Member {
    /// The next delivery, or `None` once the member closed.
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let state = self.state.clone();
        loop {
            let woken = state.wake.notified();
            let ready = state.ready.notified();
            let freed = state.freed.notified();
            tokio::pin!(woken, ready, freed);
            woken.as_mut().enable();
            ready.as_mut().enable();
            freed.as_mut().enable();
            if state.is_closed() {
                self.claim = None;
                state.release_all();
                return None;
            }
            if let Some(delivery) = state.hand_out() {
                return Some(Ok(delivery));
            }
            if let Some(claim) = self.claim.as_mut() {
                let claimed = tokio::select! {
                    claimed = claim.finish() => claimed,
                    _ = ready => continue,
                    _ = freed => continue,
                    _ = woken => continue,
                };
                self.claim = None;
                match claimed {
                    Ok((claimed, changed)) => {
                        if !claimed.more {
                            self.idle = Some(changed);
                        }
                    }
                    Err(e) if e.code() == ErrorCode::Unavailable && state.is_closed() => {
                        return None
                    }
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            let Some(free) = state.claimable() else {
                tokio::select! {
                    _ = freed => {}
                    _ = ready => {}
                    _ = woken => {}
                }
                continue;
            };
            if let Some(changed) = self.idle.as_mut() {
                tokio::select! {
                    _ = changed => self.idle = None,
                    _ = ready => {}
                    _ = woken => {}
                }
                continue;
            }
            // What went stale goes back first, so the claim finds it free.
            let stale = std::mem::take(&mut state.buffer().stale);
            release(&*state.member, stale).await;
            self.claim = Some(PendingClaim::start(&state, free));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.state.release_all();
    }
}

/// A claim running in a task of its own, so the member hands out what it
/// holds meanwhile, and what it leases is handed back when the member's
/// stream is dropped before the claim answers (dropped unfinished, it
/// interrupts a claim the store holds, lets the claim finish and releases
/// the lot). Its events go to the member's buffer as it answers.
struct PendingClaim {
    task: Option<tokio::task::JoinHandle<Result<Claimed>>>,
    state: Arc<MemberState>,
    /// The change the member waits for if this claim finds all there is
    /// (armed before it).
    changed: Option<BoxFuture<'static, ()>>,
    /// [`GroupMember::pruned`] before the claim.
    pruned: u64,
}

impl PendingClaim {
    fn start(state: &Arc<MemberState>, max: usize) -> PendingClaim {
        let changed = state.member.changes();
        let pruned = state.member.pruned();
        let claiming = state.member.clone();
        PendingClaim {
            task: Some(tokio::spawn(async move { claiming.claim(max).await })),
            state: state.clone(),
            changed: Some(changed),
            pruned,
        }
    }

    /// The claim's answer, its events buffered, with the change to wait for.
    async fn finish(&mut self) -> Result<(Claimed, BoxFuture<'static, ()>)> {
        let task = self.task.as_mut().expect("a claim is finished once");
        let claimed = task.await;
        self.task = None;
        let mut claimed =
            claimed.map_err(|e| Error::internal(format!("a group claim failed: {e}")))??;
        self.state
            .take_claimed(std::mem::take(&mut claimed.events), self.pruned);
        let changed = self.changed.take().unwrap_or_else(|| Box::pin(async {}));
        Ok((claimed, changed))
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        self.state.member.interrupt();
        let member = self.state.member.clone();
        crate::model::delivery::spawn_release(Box::pin(async move {
            if let Ok(Ok(claimed)) = task.await {
                release(&*member, claimed.events.into_iter().collect()).await;
            }
            Ok(())
        }));
    }
}

/// A keyed event's topic and key: the events a member hands out one at a
/// time.
type FlowId = (String, String);

fn flow_of(env: &Envelope) -> Option<FlowId> {
    env.key()
        .map(|k| (env.topic().as_str().to_owned(), k.to_owned()))
}

/// A claimed event not handed out yet.
struct Buffered {
    pos: i64,
    envelope: Envelope,
    claimed_at: Instant,
    /// [`GroupMember::pruned`] before its claim.
    pruned: u64,
    /// The [`Run`] it belongs to (keyed events).
    run: u64,
    /// Answers once the ack before it in its run is durable.
    after: Option<oneshot::Receiver<()>>,
}

/// A key's events this member holds after the one it handed out or has
/// ready, each to follow the one before once that is acked.
struct Run {
    /// Which claim's run this is: a later claim that leases the key again
    /// (the run's leases ran out) starts a new one.
    id: u64,
    events: VecDeque<Buffered>,
}

/// What a member claimed and has not handed out: events it may hand out
/// now, and the runs of keys with an event handed out or ready.
#[derive(Default)]
struct Buffer {
    ready: VecDeque<Buffered>,
    runs: HashMap<FlowId, Run>,
    /// Events in `runs`.
    in_runs: usize,
    /// Leased events found stale (see [`MemberState::hand_out`]), to hand
    /// back together before the next claim.
    stale: Vec<(i64, Envelope)>,
    /// The last run's id.
    last_run: u64,
}

impl Buffer {
    /// Empty it; the events to hand back (those ready: a run's later
    /// events are not leased).
    fn take_all(&mut self) -> Vec<(i64, Envelope)> {
        self.in_runs = 0;
        self.runs.clear();
        let mut all = std::mem::take(&mut self.stale);
        all.extend(self.ready.drain(..).map(|b| (b.pos, b.envelope)));
        all
    }

    /// End run `id` of `flow`, if it is still the key's run: its later
    /// events are forgotten (not leased, nothing to hand back).
    fn end_run(&mut self, flow: &FlowId, id: u64) {
        if self.runs.get(flow).is_some_and(|run| run.id == id) {
            let run = self.runs.remove(flow).map(|r| r.events).unwrap_or_default();
            self.in_runs -= run.len();
        }
    }
}

struct MemberState {
    member: Arc<dyn GroupMember>,
    closed: AtomicBool,
    wake: Notify,
    /// Deliveries handed out and not yet settled (durably).
    held: AtomicUsize,
    /// A handed-out delivery was settled.
    freed: Notify,
    buffer: std::sync::Mutex<Buffer>,
    /// An event of a run became ready.
    ready: Notify,
}

impl MemberState {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.member.is_closed()
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a claim may lease now, if the member should claim: its room
    /// (`max_in_flight` less what it holds and has ready), when it has
    /// nothing buffered, or a quarter of its room is free and its runs
    /// hold less than twice its `max_in_flight` (a member busy with its
    /// runs does not claim a few events at a time, nor pile up runs).
    fn claimable(&self) -> Option<usize> {
        let max = self.member.max_in_flight().max(1);
        let buffer = self.buffer();
        let (ready, in_runs) = (buffer.ready.len(), buffer.in_runs);
        drop(buffer);
        let held = self.held.load(Ordering::Acquire);
        let free = max.saturating_sub(held + ready);
        let idle = ready == 0 && in_runs == 0;
        let room = free >= max.div_ceil(4) && in_runs < max.saturating_mul(2);
        (free > 0 && (idle || room)).then_some(free)
    }

    /// Add what a claim leased: a key's first event is ready, the key's
    /// run after it waits. A key this member still has a run of was leased
    /// again because that run's leases ran out: the new run replaces it.
    fn take_claimed(&self, events: Vec<(i64, Envelope)>, pruned: u64) {
        if events.is_empty() {
            return;
        }
        let claimed_at = Instant::now();
        let mut buffer = self.buffer();
        let first_run = buffer.last_run + 1;
        for (pos, envelope) in events {
            let flow = flow_of(&envelope);
            let mut b = Buffered {
                pos,
                envelope,
                claimed_at,
                pruned,
                run: 0,
                after: None,
            };
            let Some(flow) = flow else {
                buffer.ready.push_back(b);
                continue;
            };
            match buffer.runs.get_mut(&flow) {
                Some(run) if run.id >= first_run => {
                    b.run = run.id;
                    run.events.push_back(b);
                    buffer.in_runs += 1;
                }
                _ => {
                    buffer.last_run += 1;
                    b.run = buffer.last_run;
                    let stale = buffer.runs.insert(
                        flow,
                        Run {
                            id: b.run,
                            events: VecDeque::new(),
                        },
                    );
                    buffer.in_runs -= stale.map_or(0, |r| r.events.len());
                    buffer.ready.push_back(b);
                }
            }
        }
    }

    /// The next ready event as a delivery, while the member holds fewer
    /// than `max_in_flight`; one whose lease is half gone, or claimed
    /// before the store deleted events, is set aside to hand back (and its
    /// run ends).
    fn hand_out(self: &Arc<Self>) -> Option<Delivery> {
        let half = self.member.ack_wait() / 2;
        let pruned = self.member.pruned();
        loop {
            if self.held.load(Ordering::Acquire) >= self.member.max_in_flight().max(1) {
                return None;
            }
            let mut buffer = self.buffer();
            let b = buffer.ready.pop_front()?;
            let flow = flow_of(&b.envelope).map(|f| (f, b.run));
            if b.claimed_at.elapsed() > half || b.pruned != pruned {
                if let Some((flow, run)) = &flow {
                    buffer.end_run(flow, *run);
                }
                buffer.stale.push((b.pos, b.envelope));
                continue;
            }
            drop(buffer);
            let settle: Arc<dyn Settle> = Arc::new(Held {
                state: self.clone(),
                pos: b.pos,
                flow,
                after: std::sync::Mutex::new(b.after),
                slot: std::sync::Mutex::new(Some(Slot::take(self))),
            });
            return Some(Delivery::new(Arc::new(b.envelope), settle));
        }
    }

    /// The delivery of run `run` of `flow` handed out was settled as
    /// queued: after an ack (which leases the run's next event) that event
    /// is ready, `after` answering once the ack is durable; after anything
    /// else the run ends.
    fn settled(&self, (flow, run): &(FlowId, u64), acked: Option<oneshot::Receiver<()>>) {
        let mut buffer = self.buffer();
        let Some(after) = acked else {
            buffer.end_run(flow, *run);
            return;
        };
        let next = match buffer.runs.get_mut(flow) {
            Some(r) if r.id == *run => r.events.pop_front(),
            _ => return,
        };
        match next {
            Some(mut b) => {
                buffer.in_runs -= 1;
                b.after = Some(after);
                buffer.ready.push_back(b);
                drop(buffer);
                self.ready.notify_waiters();
            }
            None => {
                buffer.runs.remove(flow);
            }
        }
    }

    /// The event of run `run` of `flow` to follow the one handed out, as
    /// the ack of that one leases it.
    fn next_of(&self, (flow, run): &(FlowId, u64)) -> Option<Next> {
        let buffer = self.buffer();
        let r = buffer.runs.get(flow).filter(|r| r.id == *run)?;
        let b = r.events.front()?;
        let lease = self.member.ack_wait().as_millis().min(i64::MAX as u128) as i64;
        Some(Next {
            pos: b.pos,
            attempt: b.envelope.attempt() as i64,
            until_ms: chrono::Utc::now().timestamp_millis().saturating_add(lease),
        })
    }

    /// Hand back everything buffered (the member closed or was dropped).
    fn release_all(&self) {
        let all = self.buffer().take_all();
        self.release_later(all);
    }

    /// Hand back `events` in a background task the bus's close waits for.
    fn release_later(&self, events: Vec<(i64, Envelope)>) {
        if events.is_empty() {
            return;
        }
        let member = self.member.clone();
        crate::model::delivery::spawn_release(Box::pin(async move {
            release(&*member, events).await;
            Ok(())
        }));
    }
}

/// One handed-out delivery's share of its member's `max_in_flight`, given
/// back when its settlement is done (or never comes).
struct Slot(Arc<MemberState>);

impl Slot {
    fn take(state: &Arc<MemberState>) -> Slot {
        state.held.fetch_add(1, Ordering::AcqRel);
        Slot(state.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

/// Hand back events `member` claimed but never delivered, all at once (a
/// store that group-commits settlements writes them together).
async fn release(member: &dyn GroupMember, events: Vec<(i64, Envelope)>) {
    let releases = events.into_iter().map(|(pos, env)| async move {
        member
            .settle(pos, Arc::new(env), Settled::Released, Vec::new(), None)
            .await?
            .await
    });
    let _ = futures_util::future::join_all(releases).await;
}

/// The settle side of one leased delivery; its [`Slot`] is given back when
/// the settlement is durable.
struct Held {
    state: Arc<MemberState>,
    pos: i64,
    /// Its key and the run it came in, when it has a key.
    flow: Option<(FlowId, u64)>,
    /// Answers once the ack before it in its run is durable: an ack with
    /// effects waits for it, as a store may commit those apart from its
    /// queue (an ack goes first in the queue).
    after: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    slot: std::sync::Mutex<Option<Slot>>,
}

impl Held {
    /// Queue the settlement, let the key's run go on (or hand it back),
    /// and answer once it is durable.
    fn settle_with(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
        effects: Vec<Envelope>,
    ) -> BoxFuture<'static, Result<()>> {
        let slot = self.slot.lock().map(|mut s| s.take()).unwrap_or(None);
        let after = self.after.lock().map(|mut a| a.take()).unwrap_or(None);
        let (state, pos, flow) = (self.state.clone(), self.pos, self.flow.clone());
        let envelope = envelope.clone();
        Box::pin(async move {
            if let Some(after) = after.filter(|_| !effects.is_empty()) {
                // Answered or dropped: either way, the ack before is done.
                let _ = after.await;
            }
            let acked = outcome == Outcome::Ack;
            let next = match &flow {
                Some(flow) if acked => state.next_of(flow),
                _ => None,
            };
            let queued = state
                .member
                .settle(pos, envelope, Settled::Outcome(outcome), effects, next)
                .await;
            let (durable_tx, durable_rx) = oneshot::channel();
            if let Some(flow) = &flow {
                let acked = (acked && queued.is_ok()).then_some(durable_rx);
                state.settled(flow, acked);
            }
            let settled = match queued {
                Ok(durable) => durable.await,
                Err(e) => Err(e),
            };
            let _ = durable_tx.send(());
            drop(slot);
            settled
        })
    }
}

impl Settle for Held {
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        Some(self.settle_with(envelope, outcome, Vec::new()))
    }

    /// The ack and the effects go to the store together, so they commit in
    /// one transaction.
    fn ack_with_effects(
        &self,
        envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        Ok(self.settle_with(envelope, Outcome::Ack, effects))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topic::Pattern;

    fn spec() -> SubscribeSpec {
        SubscribeSpec::new(vec![Pattern::new("t.>").unwrap()])
    }

    fn row(pos: i64, key: Option<&str>, priority: i64, lease: Option<Lease>) -> Candidate {
        Candidate {
            pos,
            topic: "t.a".into(),
            seq: pos,
            key: key.map(str::to_owned),
            kind: 0,
            priority,
            created_ms: 0,
            expires_ms: None,
            lease,
        }
    }

    fn share(max: usize, members: usize) -> Share {
        Share {
            max,
            members,
            all_heads: false,
        }
    }

    fn tails(p: &Plan) -> Vec<(i64, i64)> {
        p.tails.iter().map(|t| (t.pos, t.head)).collect()
    }

    const START: Position = Position {
        cursor: 0,
        start_seq: None,
        start_ms: None,
    };

    fn lease(state: LeaseState, attempt: i64, until_ms: i64) -> Option<Lease> {
        Some(Lease {
            state,
            attempt,
            until_ms,
        })
    }

    #[test]
    fn a_key_in_flight_blocks_its_later_events_only() {
        let rows = vec![
            row(1, Some("k"), 1, lease(LeaseState::InFlight, 1, 100)),
            row(2, Some("k"), 1, None),
            row(3, Some("j"), 1, None),
        ];
        let p = plan(&spec(), &START, &rows, 3, share(5, 1), 5, 50);
        assert_eq!(p.claims, vec![(3, 1)]);
        assert_eq!(p.cursor, 0);
    }

    #[test]
    fn priority_picks_among_flow_heads_never_within_a_flow() {
        let mut rows = vec![
            row(1, Some("k"), 0, None),
            row(2, Some("k"), 3, None),
            row(3, None, 2, None),
        ];
        // Six more keys at priority 1: eight claimable; room for two.
        let keys = ["a", "b", "c", "d", "e", "f"];
        rows.extend((4..=9).zip(keys).map(|(p, k)| row(p, Some(k), 1, None)));
        let p = plan(&spec(), &START, &rows, 9, share(2, 1), 5, 0);
        // Event 2 waits for event 1 of its key, whatever its priority.
        assert_eq!(p.claims, vec![(3, 1), (4, 1)]);
    }

    #[test]
    fn a_claim_takes_its_share_of_the_claimable_up_to_its_room() {
        let keyless = |n: i64| (1..=n).map(|p| row(p, None, 1, None)).collect::<Vec<_>>();
        let take = |rows: Vec<Candidate>, room: usize, members: usize| {
            plan(&spec(), &START, &rows, 1000, share(room, members), 5, 0)
                .claims
                .len()
        };
        assert_eq!(take(keyless(3), 256, 1), 3, "a lone member takes all");
        assert_eq!(take(keyless(3), 256, 4), 1, "at least one each");
        assert_eq!(take(keyless(40), 256, 4), 10);
        assert_eq!(take(keyless(41), 256, 4), 11, "rounded up");
        assert_eq!(take(keyless(100), 16, 1), 16, "at most the room");
        assert_eq!(take(keyless(5), 256, 0), 5, "no live member counts as one");
        // One key: one head, and its run up to RUN_MAX events.
        let one_key: Vec<_> = (1..=80).map(|p| row(p, Some("k"), 1, None)).collect();
        let p = plan(&spec(), &START, &one_key, 80, share(256, 1), 5, 0);
        assert_eq!(p.claims, vec![(1, 1)]);
        let run: Vec<_> = (2..=RUN_MAX as i64).map(|pos| (pos, 1)).collect();
        assert_eq!(tails(&p), run);
        assert!(!p.more, "the rest of the key waits for the run");
    }

    #[test]
    fn each_head_brings_an_even_run_of_its_key() {
        // Keys a and b, twenty events each, interleaved.
        let rows: Vec<_> = (1..=40)
            .map(|p| row(p, Some(if p % 2 == 1 { "a" } else { "b" }), 1, None))
            .collect();
        // Room for 2: both heads, each with RUN_ROOM more of its key.
        let p = plan(&spec(), &START, &rows, 40, share(2, 1), 5, 0);
        assert_eq!(p.claims, vec![(1, 1), (2, 1)]);
        let a = [3, 5, 7, 9].map(|pos| (pos, 1));
        let b = [4, 6, 8, 10].map(|pos| (pos, 2));
        assert_eq!(tails(&p), [a, b].concat());
        // One of two members: one head, with both heads' runs.
        let p = plan(&spec(), &START, &rows, 40, share(2, 2), 5, 0);
        assert_eq!(p.claims, vec![(1, 1)]);
        assert_eq!(tails(&p).len(), 2 * RUN_ROOM);
        assert!(p.more);
        // Every head for a store that leases a share of them itself, each
        // with the run a share would bring.
        let all = Share {
            all_heads: true,
            ..share(2, 2)
        };
        let p = plan(&spec(), &START, &rows, 40, all, 5, 0);
        assert_eq!(p.claims, vec![(1, 1), (2, 1)]);
        assert_eq!(p.tails.len(), 4 * RUN_ROOM);
    }

    #[test]
    fn a_run_ends_at_an_event_held_or_waiting() {
        let rows = vec![
            row(1, Some("k"), 1, None),
            row(2, Some("k"), 1, None),
            row(3, Some("k"), 1, lease(LeaseState::Waiting, 1, 100)),
            row(4, Some("k"), 1, None),
            row(5, Some("j"), 1, None),
            row(6, Some("j"), 1, lease(LeaseState::InFlight, 5, 10)),
            row(7, Some("j"), 1, None),
        ];
        let p = plan(&spec(), &START, &rows, 7, share(10, 1), 5, 50);
        assert_eq!(p.claims, vec![(1, 1), (5, 1)]);
        assert_eq!(tails(&p), vec![(2, 1)]);
        // Event 6 ran out of attempts; it is dead-lettered only as its
        // key's first, after event 5.
        assert!(p.dead.is_empty());
        assert_eq!(p.cursor, 0);
    }

    #[test]
    fn the_cursor_moves_over_the_settled_prefix() {
        let rows = vec![
            row(1, None, 1, lease(LeaseState::Settled, 1, 0)),
            row(2, None, 1, lease(LeaseState::Settled, 1, 0)),
            row(3, Some("k"), 1, None),
            row(4, None, 1, lease(LeaseState::Settled, 1, 0)),
        ];
        let p = plan(&spec(), &START, &rows, 4, share(0, 1), 5, 0);
        assert_eq!(p.cursor, 2);
        assert!(p.claims.is_empty());
        // Settled events left out by the store count as settled.
        let rows = vec![row(5, Some("k"), 1, None)];
        let p = plan(&spec(), &START, &rows, 9, share(1, 1), 5, 0);
        assert_eq!((p.claims, p.cursor), (vec![(5, 1)], 4));
        let p = plan(&spec(), &START, &[], 9, share(1, 1), 5, 0);
        assert_eq!(p.cursor, 9);
    }

    #[test]
    fn an_expired_lease_counts_an_attempt_then_dead_letters() {
        let again = plan(
            &spec(),
            &START,
            &[row(1, None, 1, lease(LeaseState::InFlight, 2, 10))],
            1,
            share(1, 1),
            3,
            20,
        );
        assert_eq!(again.claims, vec![(1, 3)]);
        let gone = plan(
            &spec(),
            &START,
            &[row(1, None, 1, lease(LeaseState::InFlight, 3, 10))],
            1,
            share(1, 1),
            3,
            20,
        );
        assert!(gone.claims.is_empty());
        assert_eq!(gone.dead[0].code, ErrorCode::Timeout);
        assert_eq!(gone.cursor, 1, "a dead-lettered prefix is settled");
    }

    #[test]
    fn expired_events_and_unwanted_starts_are_not_claimed() {
        let mut old = row(1, None, 1, None);
        old.expires_ms = Some(5);
        let p = plan(&spec(), &START, [&old], 1, share(1, 1), 5, 10);
        assert!(p.claims.is_empty());
        assert_eq!(p.dead[0].source, FailureSource::Expired);
        let from_3 = Position {
            start_seq: Some(3),
            ..START
        };
        let p = plan(
            &spec(),
            &from_3,
            &[row(1, None, 1, None), row(3, None, 1, None)],
            3,
            share(2, 1),
            5,
            0,
        );
        assert_eq!(p.claims, vec![(3, 1)]);
        assert_eq!(p.cursor, 2, "the store left event 2 out: settled");
    }

    #[test]
    fn settlements_count_attempts_only_for_failures() {
        let nack = Settled::Outcome(Outcome::Nack {
            delay: None,
            reason: Some("boom".into()),
        });
        assert_eq!(
            change(&nack, 2, 5, 7),
            Change::Wait {
                attempt: 2,
                until_ms: 7,
                failed_ms: Some(7)
            }
        );
        assert!(
            matches!(change(&nack, 5, 5, 7), Change::DeadLetter { reason, .. } if reason.contains("boom"))
        );
        let defer = Settled::Outcome(Outcome::Defer {
            delay: std::time::Duration::from_millis(10),
        });
        assert_eq!(
            change(&defer, 2, 5, 7),
            Change::Wait {
                attempt: 1,
                until_ms: 17,
                failed_ms: None
            }
        );
        assert_eq!(
            change(&Settled::Outcome(Outcome::Ack), 1, 5, 0),
            Change::Settle
        );
    }
}

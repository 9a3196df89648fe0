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
use tokio::sync::{watch, Notify};

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

/// How much one claim may take: at most `max` (the member's free
/// capacity), and at most its fair share among the group's live `members`
/// (see [`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The member's room.
    pub max: usize,
    /// The group's members seen claiming within [`MEMBER_TTL`].
    pub members: usize,
}

/// What one claim does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Events to lease to the member, as `(pos, attempt)`.
    pub claims: Vec<(i64, i64)>,
    /// Events to dead-letter (and settle) in the same transaction.
    pub dead: Vec<Doomed>,
    /// The new cursor (the old one when it does not move).
    pub cursor: i64,
    /// Whether more events were claimable than the claim took.
    pub more: bool,
}

/// What a claim leased to a member.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The leased events: `pos` and envelope (with its `attempt`).
    pub events: Vec<(i64, Envelope)>,
    /// Whether a claim now may find more (claim again before waiting for
    /// a change).
    pub more: bool,
}

/// A topic and key (keyless events of a topic form one flow).
type Flow<'a> = (&'a str, Option<&'a str>);

/// Decide a claim of up to `max` events from `rows`, taking at most a fair
/// share of what is claimable: its count divided by the group's live
/// `members` (rounded up, at least one), so members claiming in turn split
/// a backlog evenly and a lone member takes all it has room for. From
/// `rows`: events after
/// `position.cursor`, in `pos` order, with the group's records, complete
/// through `complete_to` except for events the store left out because they
/// are settled for the group or of topics it does not follow (so a store
/// need not read past a run of settled events behind one held event).
/// Per topic
/// and key only the first unsettled event is claimable; keyless events of a
/// topic form one flow; among flows, the highest priority head first, then
/// the oldest. An expired lease is claimable again with `attempt + 1`, or
/// dead-lettered once it had `max_deliver` attempts; an expired event is
/// dead-lettered. The cursor moves over the settled (or unwanted) prefix.
pub fn plan<'a>(
    spec: &SubscribeSpec,
    position: &Position,
    rows: impl IntoIterator<Item = &'a Candidate>,
    complete_to: i64,
    share: Share,
    max_deliver: u32,
    now_ms: i64,
) -> Plan {
    let Share { max, members } = share;
    // The first event that is not settled: the cursor stops below it.
    let mut first_open: Option<i64> = None;
    let mut blocked: HashSet<(&str, &str)> = HashSet::new();
    // Claimable events per flow, in pos order: (pos, priority, attempt).
    let mut flows: HashMap<Flow<'a>, VecDeque<(i64, i64, i64)>> = HashMap::new();
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
        let attempt = match row.lease {
            Some(l) if l.until_ms > now_ms => {
                first_open.get_or_insert(row.pos);
                if let Some(f) = flow_key {
                    blocked.insert(f);
                }
                continue;
            }
            Some(l) if l.state == LeaseState::InFlight && l.attempt >= max_deliver as i64 => {
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
            continue;
        }
        if let Some(f) = flow_key {
            if !blocked.insert(f) {
                continue;
            }
        }
        flows
            .entry((row.topic.as_str(), row.key.as_deref()))
            .or_default()
            .push_back((row.pos, row.priority, attempt));
    }

    // Highest priority first, oldest first; a flow only ever offers its head.
    let mut flows: Vec<VecDeque<(i64, i64, i64)>> = flows.into_values().collect();
    let mut heads: BinaryHeap<(i64, Reverse<i64>, usize)> = flows
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.front().map(|(pos, prio, _)| (*prio, Reverse(*pos), i)))
        .collect();
    // Claimable events: every keyless one, the head of each key.
    let claimable: usize = flows.iter().map(VecDeque::len).sum();
    let max = max.min(claimable.div_ceil(members.max(1)).max(1));
    let mut claims = Vec::new();
    while claims.len() < max {
        let Some((_, _, i)) = heads.pop() else { break };
        let Some((pos, _, attempt)) = flows[i].pop_front() else {
            continue;
        };
        if let Some((next_pos, next_prio, _)) = flows[i].front() {
            heads.push((*next_prio, Reverse(*next_pos), i));
        }
        claims.push((pos, attempt));
    }
    let cursor = match first_open {
        Some(pos) => pos - 1,
        None => complete_to,
    };
    Plan {
        more: claimable > claims.len(),
        claims,
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
    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        settled: Settled,
        effects: Vec<Envelope>,
    ) -> BoxFuture<'_, Result<()>>;

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
/// and a member with none free waits for a settlement. Claimed events not
/// handed out while at least half their lease is left are handed back, as
/// is everything claimed but not delivered when the subscription closes or
/// is dropped — a claim still running when the stream is dropped included —
/// and when the store deleted events (retention) since the claim: a
/// member never hands out an event whose lease is nearly over or that may
/// be gone, and a dropped member's events reach the others at once, not
/// after their leases.
pub async fn subscribe(member: Arc<dyn GroupMember>) -> Result<Subscription> {
    member.claim(0).await?;
    let state = Arc::new(MemberState {
        member,
        closed: AtomicBool::new(false),
        wake: Notify::new(),
        held: AtomicUsize::new(0),
        freed: Notify::new(),
    });
    let close = {
        let state = state.clone();
        CloseHandle::new(move || {
            state.closed.store(true, Ordering::Release);
            state.wake.notify_waiters();
        })
    };
    // `idle`: a claim found all there was; the next waits for a change
    // (armed before that claim) instead of asking again at once.
    let buffer = Buffer::new(state.member.clone());
    let deliveries = stream::unfold(
        (state, buffer, None::<BoxFuture<'static, ()>>),
        |(state, mut buffered, mut idle)| async move {
            loop {
                let wake = state.clone();
                let woken = wake.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if state.is_closed() {
                    state.release(buffered.take()).await;
                    return None;
                }
                if buffered.claimed_at.elapsed() > state.member.ack_wait() / 2
                    || buffered.pruned != state.member.pruned()
                {
                    state.release(buffered.take()).await;
                }
                if let Some((pos, env)) = buffered.events.pop_front() {
                    let settle: Arc<dyn Settle> = Arc::new(Held {
                        member: state.member.clone(),
                        pos,
                        slot: std::sync::Mutex::new(Some(Slot::take(&state))),
                    });
                    let delivery = Delivery::new(Arc::new(env), settle);
                    return Some((Ok(delivery), (state, buffered, idle)));
                }
                let free = state.free();
                if free == 0 {
                    let freed = state.freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if state.free() == 0 {
                        tokio::select! {
                            _ = freed => {}
                            _ = woken => {}
                        }
                    }
                    continue;
                }
                if let Some(changed) = idle.take() {
                    tokio::select! {
                        _ = changed => {}
                        _ = woken.as_mut() => continue,
                    }
                }
                let changed = state.member.changes();
                let pruned = state.member.pruned();
                let mut pending = PendingClaim::start(&state.member, free);
                let claimed = {
                    let finish = pending.finish();
                    tokio::pin!(finish);
                    tokio::select! {
                        claimed = &mut finish => claimed,
                        _ = woken.as_mut() => {
                            state.member.interrupt();
                            finish.await
                        }
                    }
                };
                match claimed {
                    Ok(claimed) => {
                        if !claimed.events.is_empty() {
                            buffered.events.extend(claimed.events);
                            buffered.claimed_at = Instant::now();
                            buffered.pruned = pruned;
                        }
                        if !claimed.more {
                            idle = Some(changed);
                        }
                    }
                    Err(e) if e.code() == ErrorCode::Unavailable && state.is_closed() => {
                        return None
                    }
                    Err(e) => return Some((Err(e), (state, buffered, idle))),
                }
            }
        },
    );
    Ok(Subscription::new(Box::pin(deliveries), close))
}

/// A claim running in a task of its own, so that what it leases is handed
/// back when the member's stream is dropped before the claim answers
/// (dropped unfinished, it interrupts a claim the store holds, lets the
/// claim finish and releases the lot).
struct PendingClaim {
    task: Option<tokio::task::JoinHandle<Result<Claimed>>>,
    member: Arc<dyn GroupMember>,
}

impl PendingClaim {
    fn start(member: &Arc<dyn GroupMember>, max: usize) -> PendingClaim {
        let claiming = member.clone();
        PendingClaim {
            task: Some(tokio::spawn(async move { claiming.claim(max).await })),
            member: member.clone(),
        }
    }

    async fn finish(&mut self) -> Result<Claimed> {
        let task = self.task.as_mut().expect("a claim is finished once");
        let claimed = task.await;
        self.task = None;
        claimed.map_err(|e| Error::internal(format!("a group claim failed: {e}")))?
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        self.member.interrupt();
        let member = self.member.clone();
        crate::model::delivery::spawn_release(Box::pin(async move {
            if let Ok(Ok(claimed)) = task.await {
                release(&*member, claimed.events.into()).await;
            }
            Ok(())
        }));
    }
}

/// Claimed events not yet handed out, and when they were claimed. Dropped
/// with events in it (the stream was dropped rather than run to its end),
/// it hands them back in a background task that [`Bus::close`](crate::Bus::close)
/// waits for, so they are not stuck until their leases run out.
struct Buffer {
    events: VecDeque<(i64, Envelope)>,
    claimed_at: Instant,
    /// [`GroupMember::pruned`] before the claim.
    pruned: u64,
    member: Arc<dyn GroupMember>,
}

impl Buffer {
    fn new(member: Arc<dyn GroupMember>) -> Buffer {
        Buffer {
            events: VecDeque::new(),
            claimed_at: Instant::now(),
            pruned: member.pruned(),
            member,
        }
    }

    fn take(&mut self) -> VecDeque<(i64, Envelope)> {
        std::mem::take(&mut self.events)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let events = self.take();
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

struct MemberState {
    member: Arc<dyn GroupMember>,
    closed: AtomicBool,
    wake: Notify,
    /// Deliveries handed out and not yet settled (durably).
    held: AtomicUsize,
    /// A handed-out delivery was settled.
    freed: Notify,
}

impl MemberState {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.member.is_closed()
    }

    /// What a claim may take now (nothing is buffered when it runs).
    fn free(&self) -> usize {
        let held = self.held.load(Ordering::Acquire);
        self.member.max_in_flight().max(1).saturating_sub(held)
    }

    /// Hand back events claimed but never delivered.
    async fn release(&self, buffered: VecDeque<(i64, Envelope)>) {
        release(&*self.member, buffered).await
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
async fn release(member: &dyn GroupMember, buffered: VecDeque<(i64, Envelope)>) {
    let releases = buffered
        .into_iter()
        .map(|(pos, env)| member.settle(pos, Arc::new(env), Settled::Released, Vec::new()));
    let _ = futures_util::future::join_all(releases).await;
}

/// The settle side of one leased delivery; its [`Slot`] is given back when
/// the settlement completes.
struct Held {
    member: Arc<dyn GroupMember>,
    pos: i64,
    slot: std::sync::Mutex<Option<Slot>>,
}

impl Held {
    fn slot(&self) -> Option<Slot> {
        self.slot.lock().map(|mut s| s.take()).unwrap_or(None)
    }
}

impl Settle for Held {
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let member = self.member.clone();
        let (pos, envelope, slot) = (self.pos, envelope.clone(), self.slot());
        Some(Box::pin(async move {
            let settled = member
                .settle(pos, envelope, Settled::Outcome(outcome), Vec::new())
                .await;
            drop(slot);
            settled
        }))
    }

    /// The ack and the effects go to the store together, so they commit in
    /// one transaction.
    fn ack_with_effects(
        &self,
        envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        let member = self.member.clone();
        let (pos, envelope, slot) = (self.pos, envelope.clone(), self.slot());
        Ok(Box::pin(async move {
            let settled = member
                .settle(pos, envelope, Settled::Outcome(Outcome::Ack), effects)
                .await;
            drop(slot);
            settled
        }))
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
        Share { max, members }
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
        // One key: only its first event is claimable.
        let one_key: Vec<_> = (1..=40).map(|p| row(p, Some("k"), 1, None)).collect();
        let p = plan(&spec(), &START, &one_key, 40, share(256, 1), 5, 0);
        assert_eq!(p.claims, vec![(1, 1)]);
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

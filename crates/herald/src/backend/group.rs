//! Durable consumer groups over a stored log: the rules every store shares.
//!
//! A group has a *cursor* (every event at or below it, in the log's commit
//! order `pos`, is settled for the group) and, above it, one delivery record
//! per event a member touched: in flight (leased until its ack deadline),
//! waiting (nacked or deferred until a time) or settled. This module owns
//! what a member may claim next ([`plan`]: per topic and key only the first
//! unsettled event, highest priority first, expired leases again with
//! `attempt + 1`, dead letters past `max_deliver`), what a settlement does to
//! a delivery ([`change`]), and the codes stores keep kinds, priorities and
//! lease states under. The member stream that claims, hands out and
//! settles deliveries through a store's
//! [`GroupMember`](super::member::GroupMember) is
//! [`member`](super::member)'s.
//!
//! It owns no storage: where cursors and leases live, and how a claim is made
//! atomic against other members and processes, is the store's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::backend::dead_lettering::gave_up_at_max_deliver;
use crate::backend::subscription::{StartPosition, SubscribeSpec};
use crate::backend::transport::DeliveryState;
use crate::model::dead_letter::FailureSource;
use crate::model::delivery::Outcome;
use crate::model::envelope::{Envelope, Kind, Priority};
use crate::model::error::{Error, ErrorCode, Result};

/// How long a member counts as live for the fair share of a claim (see
/// [`plan`]) after its last claim. An idle member claims at least every
/// [`IDLE_MAX`](super::member::IDLE_MAX); one at its `max_in_flight` does not claim, and is not
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

/// The bit of [`kind_bits`] that says a group orders per topic.
const PER_TOPIC_BIT: i64 = 1 << 4;

/// The kinds a group follows, one bit each, and its ordering (a bit above
/// them, set for [`GroupOrdering::PerTopic`](crate::GroupOrdering)): kept
/// with the group so every member must follow the same kinds in the same
/// order. A group stored before orderings has the bit clear: per key.
pub fn kind_bits(spec: &SubscribeSpec) -> i64 {
    let kinds: i64 = [Kind::Event, Kind::Command, Kind::Response, Kind::Intent]
        .iter()
        .enumerate()
        .map(|(i, k)| (spec.kinds.allows(*k) as i64) << i)
        .sum();
    match spec.ordering {
        crate::GroupOrdering::PerKey => kinds,
        crate::GroupOrdering::PerTopic => kinds | PER_TOPIC_BIT,
    }
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
/// stored) when `spec` follows other topics or kinds, or orders them
/// otherwise.
pub fn check_member(group: &str, patterns: &str, kinds: i64, spec: &SubscribeSpec) -> Result<()> {
    if patterns != patterns_text(spec) || kinds & !PER_TOPIC_BIT != kind_bits(spec) & !PER_TOPIC_BIT
    {
        return Err(Error::validation(format!(
            "group {group:?} follows `{patterns}`; a member cannot follow `{}` (or other kinds)",
            patterns_text(spec)
        )));
    }
    if kinds != kind_bits(spec) {
        let ordered = if kinds & PER_TOPIC_BIT != 0 {
            crate::GroupOrdering::PerTopic
        } else {
            crate::GroupOrdering::PerKey
        };
        return Err(Error::validation(format!(
            "group {group:?} orders its events {}; a member cannot order them {}",
            ordered.as_str(),
            spec.ordering.as_str()
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

/// A topic and the key that orders its events
/// ([`GroupOrdering::flow_key`](crate::GroupOrdering::flow_key)): `None`
/// for keyless events no flow orders (they form one unordered flow).
type Flow<'a> = (&'a str, Option<&'a str>);

/// A claimable event: pos, priority, attempt.
type Claimable = (i64, i64, i64);

/// Decide a claim of up to `max` events from `rows`. What is claimable
/// comes in *heads*: every unordered keyless event, and per topic and key
/// (per topic, for keyless events of a group ordered
/// [`PerTopic`](crate::GroupOrdering::PerTopic)) the first
/// unsettled event, with the *run* of the key's later events that are free
/// too (no live lease, none waiting before them). A claim takes at most a
/// fair share of the heads — their count divided by the group's live
/// `members`, rounded up, at least one — so members claiming in turn split
/// a backlog's keys evenly and a lone member takes all it has room for;
/// each keyed head comes with up to as much of its run as the room left
/// over gives every head it takes alike (at most [`RUN_MAX`] events a key).
/// The member hands a run's events out one at a time, each once the one
/// before it is acked, so one member keeps a key's order without a claim
/// per event (see [`Claimers::subscribe`](super::member::Claimers::subscribe)).
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
        let flow_key = spec
            .ordering
            .flow_key(row.key.as_deref())
            .map(|k| (row.topic.as_str(), k));
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
                gave_up_at_max_deliver(spec.group.as_deref(), &row.topic, max_deliver);
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
            .entry((
                row.topic.as_str(),
                spec.ordering.flow_key(row.key.as_deref()),
            ))
            .or_default()
            .push_back((row.pos, row.priority, attempt));
    }

    // Heads: every unordered event, the first of each key's run.
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
        /// Who gave up.
        source: FailureSource,
    },
}

/// What `settled` does to delivery `attempt` of an event, at `now_ms`:
/// releases and deferrals do not count an attempt, a nack does (and
/// dead-letters at `max_deliver`), a term dead-letters.
/// A give-up at `max_deliver` is logged for `group` on `topic` the first
/// time ([`gave_up_at_max_deliver`]).
pub fn change(
    settled: &Settled,
    attempt: i64,
    max_deliver: u32,
    now_ms: i64,
    (group, topic): (&str, &str),
) -> Change {
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
            gave_up_at_max_deliver(Some(group), topic, max_deliver);
            Change::DeadLetter {
                code: ErrorCode::Internal,
                reason: format!(
                    "gave up after {attempt} attempts: {}",
                    reason.as_deref().unwrap_or("nacked")
                ),
                source: FailureSource::Handler,
            }
        }
        Settled::Outcome(Outcome::Nack { delay, .. }) => Change::Wait {
            attempt,
            until_ms: now_ms.saturating_add(delay.map_or(0, ms)),
            failed_ms: Some(now_ms),
        },
        Settled::Outcome(Outcome::Term {
            code,
            reason,
            source,
        }) => Change::DeadLetter {
            code: *code,
            reason: reason.clone(),
            source: *source,
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
    fn per_topic_a_topics_keyless_events_are_one_flow_beside_its_keys() {
        let mut rows = vec![
            row(1, None, 1, None),
            row(2, None, 1, None),
            row(3, Some("k"), 1, None),
            row(4, None, 1, None),
        ];
        rows.push(Candidate {
            topic: "t.b".into(),
            ..row(5, None, 1, None)
        });
        let per_key = plan(&spec(), &START, &rows, 5, share(8, 1), 5, 0);
        assert_eq!(per_key.claims, vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
        let mut per_topic = spec();
        per_topic.ordering = crate::GroupOrdering::PerTopic;
        let p = plan(&per_topic, &START, &rows, 5, share(8, 1), 5, 0);
        // Heads: t.a's keyless flow, its key k, t.b's keyless flow.
        assert_eq!(p.claims, vec![(1, 1), (3, 1), (5, 1)]);
        assert_eq!(tails(&p), vec![(2, 1), (4, 1)]);
        // While event 1 is in flight its topic's later keyless events wait.
        rows[0].lease = lease(LeaseState::InFlight, 1, 100);
        let p = plan(&per_topic, &START, &rows, 5, share(8, 1), 5, 50);
        assert_eq!(p.claims, vec![(3, 1), (5, 1)]);
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
            change(&nack, 2, 5, 7, ("g", "t")),
            Change::Wait {
                attempt: 2,
                until_ms: 7,
                failed_ms: Some(7)
            }
        );
        assert!(
            matches!(change(&nack, 5, 5, 7, ("g", "t")), Change::DeadLetter { reason, .. } if reason.contains("boom"))
        );
        let defer = Settled::Outcome(Outcome::Defer {
            delay: std::time::Duration::from_millis(10),
        });
        assert_eq!(
            change(&defer, 2, 5, 7, ("g", "t")),
            Change::Wait {
                attempt: 1,
                until_ms: 17,
                failed_ms: None
            }
        );
        assert_eq!(
            change(&Settled::Outcome(Outcome::Ack), 1, 5, 0, ("g", "t")),
            Change::Settle
        );
    }
}

//! The member stream of a durable consumer group: what a process's
//! members of a group share, the claims that fill it, and the settle side
//! of each delivery.
//!
//! A process's members of one group (following the same topics and kinds,
//! from the same start, with the same ack wait) share one store member
//! ([`GroupMember`]) and one *claimer*: a task that claims for all of them,
//! as much as their free room together, into one buffer they hand out
//! from. Members of one process do not compete for the group's events in
//! the store, the group counts one member per process for its fair share,
//! and a member that goes leaves what the others may take where they find
//! it. Each member still holds at most its own `max_in_flight`.
//!
//! Owns the buffer of claimed events (the keys' runs, handed out one event
//! at a time), when to claim, what is handed back and when. The claim
//! plans and what a settlement changes are [`group`](super::group)'s; how
//! a claim is made atomic against other processes is the store's.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::stream;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::backend::group::{kind_bits, patterns_text, Claimed, Next, Settled};
use crate::backend::subscription::{CloseHandle, GroupOrdering, SubscribeSpec, Subscription};
use crate::model::delivery::{BoxFuture, Delivery, Outcome, Settle};
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};

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

    /// A count the store raises each time it deletes events (retention):
    /// a member hands back what it claimed before and has not handed out
    /// yet, as it may be gone, and claims again.
    fn pruned(&self) -> u64;
}

/// A store's group members in this process: the members of one group
/// that ask for the same thing share a store member and a claimer (see the
/// module). A store keeps one, and opens every member through it.
#[derive(Default)]
pub struct Claimers {
    shared: std::sync::Mutex<HashMap<String, Weak<MemberState>>>,
}

impl Claimers {
    /// A member of `spec.group`: it joins the members of this process that
    /// share its spec, or starts a new store member, `member()`. The group
    /// is registered (or checked against what it follows) through
    /// [`GroupMember::claim`] with no room, whose error this returns.
    ///
    /// The member hands out what the claimer claims while it holds fewer
    /// than `spec.max_in_flight` deliveries (claimed and not yet settled).
    /// Of a key's run (see [`plan`](super::group::plan)) one event at a
    /// time is out: the next once the ack of the one before is queued (the
    /// store applies it first); any other outcome hands the rest of the run
    /// back. Claimed events not handed out while at least half their lease
    /// is left are handed back, as is everything claimed and not handed
    /// out when the last of the members closes or is dropped — a claim
    /// still running then included — and when the store deleted events
    /// (retention) since the claim: no member gets an event whose lease is
    /// nearly over or that may be gone, and a dropped member's events
    /// reach the others at once, not after their leases.
    pub async fn subscribe(
        &self,
        spec: &SubscribeSpec,
        member: impl FnOnce() -> Arc<dyn GroupMember>,
    ) -> Result<Subscription> {
        let key = share_key(spec);
        let own = Arc::new(Own {
            max: spec.max_in_flight.max(1),
            held: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            attached: AtomicBool::new(true),
        });
        let state = {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.retain(|_, s| s.strong_count() > 0);
            match shared.get(&key).and_then(Weak::upgrade) {
                Some(state) if state.attach(&own) => state,
                _ => {
                    let state = MemberState::new(member(), own.max, spec.ordering);
                    shared.insert(key, Arc::downgrade(&state));
                    state
                }
            }
        };
        if let Err(e) = state.member.claim(0).await {
            state.detach(&own);
            return Err(e);
        }
        // Closing wakes the stream, which counts the member out; so does
        // dropping it (in the subscription's drop, so the bus's close waits
        // for what that hands back).
        let close = {
            let own = own.clone();
            CloseHandle::new(move || {
                own.closed.store(true, Ordering::Release);
                own.wake.notify_waiters();
            })
        };
        let member = Member { state, own };
        let deliveries = stream::unfold(
            member,
            |m| async move { m.next().await.map(|next| (next, m)) },
        );
        Ok(Subscription::new(Box::pin(deliveries), close))
    }
}

/// Which members of a group share a claimer: those that ask for the same
/// events with the same lease and attempts.
fn share_key(spec: &SubscribeSpec) -> String {
    format!(
        "{}\n{}\n{}\n{:?}\n{}\n{:?}",
        spec.group.as_deref().unwrap_or_default(),
        patterns_text(spec),
        kind_bits(spec),
        spec.start,
        spec.ack_wait.as_nanos(),
        spec.max_deliver
    )
}

/// One member's share of what its process's members of the group hold.
struct Own {
    /// Its `max_in_flight`.
    max: usize,
    /// Deliveries it handed out and that are not settled yet.
    held: AtomicUsize,
    /// Its subscription was closed.
    closed: AtomicBool,
    /// Wakes its stream when closed.
    wake: Notify,
    /// Counted in its state's members and room (until its stream ends or
    /// is dropped).
    attached: AtomicBool,
}

/// A member's stream.
struct Member {
    state: Arc<MemberState>,
    own: Arc<Own>,
}

impl Member {
    /// The next delivery, or `None` once the member closed.
    async fn next(&self) -> Option<Result<Delivery>> {
        let (state, own) = (&self.state, &self.own);
        state.start();
        loop {
            let ready = state.ready.notified();
            let freed = state.freed.notified();
            let woken = own.wake.notified();
            tokio::pin!(ready, freed, woken);
            ready.as_mut().enable();
            freed.as_mut().enable();
            woken.as_mut().enable();
            if own.closed.load(Ordering::Acquire) || state.is_closed() {
                state.detach(own);
                return None;
            }
            if let Some(e) = state.take_error() {
                if e.code() == ErrorCode::Unavailable && state.is_closed() {
                    return None;
                }
                return Some(Err(e));
            }
            if let Some(delivery) = state.hand_out(own) {
                return Some(Ok(delivery));
            }
            tokio::select! {
                _ = ready => {}
                _ = freed => {}
                _ = woken => {}
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.state.detach(&self.own);
    }
}

/// The claimer of a process's members of a group: while any is attached,
/// it claims as much as their free room, once something may be claimable
/// (see [`MemberState::claimable`]); a claim that finds all there is makes
/// it wait for a change. When the last member goes it interrupts a claim
/// the store holds, hands back what that claim leased and everything
/// buffered, and ends; so it does when the store closes.
async fn claim_loop(state: Arc<MemberState>) {
    let member = state.member.clone();
    let mut idle: Option<BoxFuture<'static, ()>> = None;
    loop {
        if state.stopping.load(Ordering::Acquire) || member.is_closed() {
            break;
        }
        let free = match state.claimable() {
            Some(free) if !state.has_error() => free,
            _ => {
                state.claimer.notified().await;
                continue;
            }
        };
        if let Some(changed) = idle.as_mut() {
            tokio::select! {
                _ = changed => idle = None,
                _ = state.claimer.notified() => {}
            }
            continue;
        }
        let changed = member.changes();
        let pruned = member.pruned();
        let claim = member.claim(free);
        tokio::pin!(claim);
        let claimed = loop {
            tokio::select! {
                claimed = &mut claim => break Some(claimed),
                _ = state.claimer.notified() => {
                    if state.stopping.load(Ordering::Acquire) {
                        member.interrupt();
                        if let Ok(claimed) = claim.as_mut().await {
                            release(&*member, claimed.events).await;
                        }
                        break None;
                    }
                }
            }
        };
        match claimed {
            None => break,
            Some(Ok(claimed)) => {
                if !claimed.more {
                    idle = Some(changed);
                }
                state.take_claimed(claimed.events, pruned);
                state.ready.notify_waiters();
            }
            Some(Err(_)) if member.is_closed() => break,
            Some(Err(e)) => {
                *state.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                state.ready.notify_waiters();
            }
        }
    }
    state.ended.store(true, Ordering::Release);
    state.ready.notify_waiters();
    let all = state.buffer().take_all();
    release(&*member, all).await;
}

/// A topic and the key that orders its events
/// ([`GroupOrdering::flow_key`]): the events a member hands out one at a
/// time.
type FlowId = (String, String);

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
    /// The last run's id.
    last_run: u64,
}

impl Buffer {
    /// Empty it; the events to hand back (those ready: a run's later
    /// events are not leased).
    fn take_all(&mut self) -> Vec<(i64, Envelope)> {
        self.in_runs = 0;
        self.runs.clear();
        self.ready.drain(..).map(|b| (b.pos, b.envelope)).collect()
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
    /// Which events it hands out one at a time.
    ordering: GroupOrdering,
    /// Members attached: once it falls to 0 it stays there.
    members: AtomicUsize,
    /// The attached members' `max_in_flight`, summed.
    room: AtomicUsize,
    /// The claimer was started (by a member's first poll: a member never
    /// polled leases nothing).
    started: AtomicBool,
    /// The claimer's task, which the last member out leaves to finish in a
    /// release the bus's close waits for.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last member went: the claimer stops.
    stopping: AtomicBool,
    /// The claimer ended (stopped, or the store closed).
    ended: AtomicBool,
    /// Wakes the claimer, keeping the wake-up when it is busy: room freed,
    /// the ready events taken, a run ended, an error taken, stopping.
    claimer: Notify,
    /// Deliveries handed out and not yet settled (durably).
    held: AtomicUsize,
    /// A handed-out delivery was settled.
    freed: Notify,
    buffer: std::sync::Mutex<Buffer>,
    /// Events became ready (or the claimer ended, or failed).
    ready: Notify,
    /// A claim's error, for the next member that polls (the claimer waits
    /// until one has).
    error: std::sync::Mutex<Option<Error>>,
}

impl MemberState {
    fn new(member: Arc<dyn GroupMember>, room: usize, ordering: GroupOrdering) -> Arc<MemberState> {
        Arc::new(MemberState {
            member,
            ordering,
            members: AtomicUsize::new(1),
            room: AtomicUsize::new(room),
            started: AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
            stopping: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            claimer: Notify::new(),
            held: AtomicUsize::new(0),
            freed: Notify::new(),
            buffer: std::sync::Mutex::new(Buffer::default()),
            ready: Notify::new(),
            error: std::sync::Mutex::new(None),
        })
    }

    /// The flow `env` is handed out in, one event at a time; `None` for an
    /// unordered event.
    fn flow_of(&self, env: &Envelope) -> Option<FlowId> {
        self.ordering
            .flow_key(env.key())
            .map(|k| (env.topic().as_str().to_owned(), k.to_owned()))
    }

    /// Count `own` in, unless the last member already went.
    fn attach(&self, own: &Own) -> bool {
        let joined = self
            .members
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .is_ok();
        if joined {
            self.room.fetch_add(own.max, Ordering::AcqRel);
            self.claimer.notify_one();
        }
        joined
    }

    /// Count `own` out (once). The last member out hands back what is
    /// buffered and stops the claimer, which hands back what a claim under
    /// way leases; the bus's close waits for both.
    fn detach(&self, own: &Own) {
        if !own.attached.swap(false, Ordering::AcqRel) {
            return;
        }
        self.room.fetch_sub(own.max, Ordering::AcqRel);
        if self.members.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stopping.store(true, Ordering::Release);
            self.claimer.notify_one();
            self.release_all();
            let task = self.task.lock().ok().and_then(|mut t| t.take());
            if let Some(task) = task {
                crate::model::delivery::spawn_release(Box::pin(async move {
                    let _ = task.await;
                    Ok(())
                }));
            }
        }
    }

    /// Start the claimer, once.
    fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            let task = tokio::spawn(claim_loop(self.clone()));
            if let Ok(mut slot) = self.task.lock() {
                *slot = Some(task);
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.member.is_closed()
    }

    fn has_error(&self) -> bool {
        self.error.lock().map(|e| e.is_some()).unwrap_or(false)
    }

    fn take_error(&self) -> Option<Error> {
        let e = self.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        if e.is_some() {
            self.claimer.notify_one();
        }
        e
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members' room together.
    fn room(&self) -> usize {
        self.room.load(Ordering::Acquire).max(1)
    }

    /// What a claim may lease now, if the claimer should claim: once the
    /// members took every ready event, their free room (their
    /// `max_in_flight` together, less what they hold), when nothing is
    /// buffered, or a quarter of the room is free and the runs hold less
    /// than twice the room (members busy with their runs do not claim a
    /// few events at a time, nor pile up runs). While events are ready the
    /// members have work, and a claim would cost a round trip for little.
    fn claimable(&self) -> Option<usize> {
        let max = self.room();
        let buffer = self.buffer();
        let (ready, in_runs) = (buffer.ready.len(), buffer.in_runs);
        drop(buffer);
        if ready > 0 {
            return None;
        }
        let free = max.saturating_sub(self.held.load(Ordering::Acquire));
        let room = free >= max.div_ceil(4) && in_runs < max.saturating_mul(2);
        (free > 0 && (in_runs == 0 || room)).then_some(free)
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
            let flow = self.flow_of(&envelope);
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

    /// The next ready event as a delivery for the member `own`, while it
    /// holds fewer than its `max_in_flight` (and all hold fewer than their
    /// room); one whose lease is half gone, or claimed before the store
    /// deleted events, is handed back (and its run ends) at once: a claim
    /// the store holds until something is claimable may be waiting for it.
    fn hand_out(self: &Arc<Self>, own: &Arc<Own>) -> Option<Delivery> {
        let mut stale = Vec::new();
        let delivery = self.hand_out_fresh(own, &mut stale);
        self.release_later(stale);
        delivery
    }

    fn hand_out_fresh(
        self: &Arc<Self>,
        own: &Arc<Own>,
        stale: &mut Vec<(i64, Envelope)>,
    ) -> Option<Delivery> {
        let half = self.member.ack_wait() / 2;
        let pruned = self.member.pruned();
        loop {
            if self.held.load(Ordering::Acquire) >= self.room()
                || own.held.load(Ordering::Acquire) >= own.max
            {
                return None;
            }
            let mut buffer = self.buffer();
            let b = buffer.ready.pop_front()?;
            if buffer.ready.is_empty() {
                // The claimer may claim once nothing is ready.
                self.claimer.notify_one();
            }
            let flow = self.flow_of(&b.envelope).map(|f| (f, b.run));
            if b.claimed_at.elapsed() > half || b.pruned != pruned {
                if let Some((flow, run)) = &flow {
                    buffer.end_run(flow, *run);
                }
                stale.push((b.pos, b.envelope));
                continue;
            }
            drop(buffer);
            let settle: Arc<dyn Settle> = Arc::new(Held {
                state: self.clone(),
                pos: b.pos,
                flow,
                after: std::sync::Mutex::new(b.after),
                slot: std::sync::Mutex::new(Some(Slot::take(self, own))),
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

/// One handed-out delivery's share of its member's `max_in_flight` (and of
/// its members' room), given back when its settlement is done (or never
/// comes).
struct Slot(Arc<MemberState>, Arc<Own>);

impl Slot {
    fn take(state: &Arc<MemberState>, own: &Arc<Own>) -> Slot {
        state.held.fetch_add(1, Ordering::AcqRel);
        own.held.fetch_add(1, Ordering::AcqRel);
        Slot(state.clone(), own.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.1.held.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
        self.0.claimer.notify_one();
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

//! The delivery queue: one subscriber (a group-less subscription or a whole
//! consumer group) and the member streams that pull from it.
//!
//! Owns what happens between "an event is for this subscriber" and "it was
//! settled": capacity (a semaphore of `buffer` permits, taken by whoever feeds
//! the queue and returned as events are delivered), the priority order among
//! flows (one FIFO per topic and key), the per-key (or per-topic) lock of groups, each group
//! member's `max_in_flight`, ack deadlines, redelivery, and giving up to the
//! host's dead-letter store. The in-memory transport feeds it under its topic
//! locks; a durable transport feeds it from its log with [`Queue::push`]. It
//! does not assign `seq`, store anything, or know about topics beyond matching
//! them; what it needs from its transport is the [`QueueHost`].

use std::cmp::Reverse;

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::Utc;
use futures_core::Stream;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::backend::dead_lettering::{
    gave_up_at_max_deliver, DeadLetterWrites, DEAD_LETTER_RETRY_DELAY,
};
use crate::backend::subscription::{CloseHandle, SubscribeSpec, Subscription};
use crate::backend::transport::DeliveryState;
use crate::model::dead_letter::{DeadLetter, FailureSource};
use crate::model::delivery::{BoxFuture, Delivery, Outcome, Settle};
use crate::model::envelope::{Envelope, Priority};
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::topic::Topic;

/// What a [`Queue`] needs from the transport that feeds it.
pub trait QueueHost: Send + Sync + 'static {
    /// Delivery attempts before an event is dead-lettered.
    fn max_deliver(&self) -> u32;

    /// Write `letter` (the queue gave up on its envelope; the `id` is the
    /// host's to assign): `Ok` once it is stored — on disk, for a durable
    /// store. The queue settles the message only after that, and delivers
    /// it again when the write fails; the host neither retries nor spawns.
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>>;

    /// The store's count of dead-letter writes under way, which its close
    /// and its listings wait for
    /// ([`DEAD_LETTER_WRITE_WAIT`](crate::backend::dead_lettering::DEAD_LETTER_WRITE_WAIT)).
    fn dead_letter_writes(&self) -> &DeadLetterWrites;

    /// `queue` took the ack of a delivery of `envelope` that was still in
    /// flight. A host that keeps offsets commits it here; the future, if
    /// any, is what the ack waits for. The default commits nothing.
    fn acked(
        &self,
        queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let _ = (queue, envelope);
        None
    }

    /// The dead letter of `envelope`, a delivery of `queue`, is written. A
    /// host that settles at its source (a Kafka offset, a JetStream
    /// message) does so here, as for an ack; the future, if any, is what
    /// the settlement waits for. The default settles nothing.
    fn dead_lettered(
        &self,
        queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let _ = (queue, envelope);
        None
    }

    /// A member of `queue` closed. The default closes the queue with its
    /// last member.
    fn leave(&self, queue: &Arc<Queue>) {
        if queue.leave() {
            queue.close();
        }
    }
}

/// One subscriber's queue of deliverable events; see the module docs.
pub struct Queue {
    spec: SubscribeSpec,
    permits: Semaphore,
    state: Mutex<State>,
    closed: AtomicBool,
    members: AtomicUsize,
    hasher: foldhash::fast::RandomState,
    host: Weak<dyn QueueHost>,
    next_member: AtomicU64,
    /// The rooms of its group members, woken when it closes (a member
    /// without room waits on its room, not among the queue's waiters,
    /// which every new event wakes).
    rooms: Mutex<Vec<Weak<Room>>>,
    me: Weak<Queue>,
}

#[derive(Default)]
struct State {
    flows: HashMap<u64, Flow, foldhash::fast::RandomState>,
    ready: BinaryHeap<Ready>,
    next_order: i64,
    next_front: i64,
    waiters: Vec<(u64, Waker)>,
    /// Deliveries handed out and not yet settled, by envelope address (each
    /// delivery, redeliveries included, has its own `Arc<Envelope>`).
    inflight: HashSet<usize, foldhash::fast::RandomState>,
    /// Ack deadlines in delivery order; entries settled meanwhile are skipped.
    deadlines: VecDeque<(Instant, Arc<Envelope>)>,
    /// Whether a sweeper task enforces the deadlines.
    sweeping: bool,
    /// Events waiting out a nack's delay, by topic and seq, as they will be
    /// delivered (with their next attempt).
    delayed: HashMap<(Topic, u64), Arc<Envelope>, foldhash::fast::RandomState>,
    /// Deliveries settled for another attempt after the queue closed, as
    /// they would have come again: nothing delivers them, but a successor
    /// that takes the queue's events over learns their attempt.
    handed_back: HashMap<(Topic, u64), Arc<Envelope>, foldhash::fast::RandomState>,
    /// When each event that failed and is being retried first failed.
    first_failures: HashMap<uuid::Uuid, chrono::DateTime<Utc>, foldhash::fast::RandomState>,
}

#[derive(Default)]
struct Flow {
    items: VecDeque<Item>,
    locked: bool,
}

struct Item {
    env: Arc<Envelope>,
    order: i64,
    permit: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ready {
    priority: Priority,
    order: Reverse<i64>,
    flow: u64,
}

impl Queue {
    /// A queue for `spec` whose dead letters and member departures go to `host`.
    pub fn new(spec: SubscribeSpec, host: Weak<dyn QueueHost>) -> Arc<Queue> {
        Arc::new_cyclic(|me| Queue {
            permits: Semaphore::new(spec.buffer),
            spec,
            state: Mutex::new(State {
                next_front: -1,
                ..State::default()
            }),
            closed: AtomicBool::new(false),
            members: AtomicUsize::new(0),
            hasher: foldhash::fast::RandomState::default(),
            host,
            next_member: AtomicU64::new(1),
            rooms: Mutex::new(Vec::new()),
            me: me.clone(),
        })
    }

    /// What this queue delivers.
    pub fn spec(&self) -> &SubscribeSpec {
        &self.spec
    }

    /// The consumer group, if any.
    pub fn group(&self) -> Option<&str> {
        self.spec.group.as_deref()
    }

    pub(crate) fn permits(&self) -> &Semaphore {
        &self.permits
    }

    /// Whether events on `topic` are for this queue.
    pub fn follows(&self, topic: &Topic) -> bool {
        self.spec.patterns.iter().any(|p| p.matches(topic))
    }

    /// Count one more member.
    pub fn join(&self) {
        self.members.fetch_add(1, Ordering::AcqRel);
    }

    /// A member left; true when it was the last one.
    pub fn leave(&self) -> bool {
        self.members.fetch_sub(1, Ordering::AcqRel) == 1
    }

    pub(crate) fn release(&self, n: u32) {
        if n > 0 {
            self.permits.add_permits(n as usize);
        }
    }

    /// Where event `seq` of `topic` stands in this queue: waiting (`Pending`,
    /// also while a nack's delay runs), delivered and unsettled
    /// (`InFlight`), or `None` when the queue does not hold it.
    pub fn state_of(&self, topic: &Topic, seq: u64) -> Option<DeliveryState> {
        let st = self.state.lock();
        let is = |e: &Envelope| e.topic() == topic && e.seq() == Some(seq);
        if st.delayed.contains_key(&(topic.clone(), seq))
            || st
                .flows
                .values()
                .any(|f| f.items.iter().any(|i| is(&i.env)))
        {
            return Some(DeliveryState::Pending);
        }
        st.deadlines
            .iter()
            .find(|(_, e)| is(e) && st.inflight.contains(&address(e)))
            .map(|(_, e)| DeliveryState::InFlight {
                attempt: e.attempt(),
            })
    }

    /// Every event this queue holds unsettled — waiting, waiting out a
    /// nack's delay, in flight, or handed back after it closed — as
    /// `(topic, seq)`, each once.
    pub fn unsettled(&self) -> Vec<(Topic, u64)> {
        self.held_attempts()
            .into_iter()
            .map(|(topic, seq, _)| (topic, seq))
            .collect()
    }

    /// Every event this queue holds unsettled, each once, with the attempt
    /// it would next be delivered as: the attempt it waits as, or one more
    /// than its delivery in flight. (What a host hands to a successor that
    /// takes the queue's events over, or writes beside its offsets.) One
    /// pass over the queue, however many it holds.
    pub fn held_attempts(&self) -> Vec<(Topic, u64, u32)> {
        let st = self.state.lock();
        let mut held: HashMap<(Topic, u64), u32, foldhash::fast::RandomState> = HashMap::default();
        // Later kinds win: a delivery in flight, then one waiting, then one
        // delayed or handed back (what it will come as for certain).
        for (_, e) in st.deadlines.iter() {
            if let (Some(seq), true) = (e.seq(), st.inflight.contains(&address(e))) {
                held.insert((e.topic().clone(), seq), e.attempt().saturating_add(1));
            }
        }
        for i in st.flows.values().flat_map(|f| &f.items) {
            if let Some(seq) = i.env.seq() {
                held.insert((i.env.topic().clone(), seq), i.env.attempt());
            }
        }
        for (at, e) in st.delayed.iter().chain(st.handed_back.iter()) {
            held.insert(at.clone(), e.attempt());
        }
        held.into_iter()
            .map(|((topic, seq), next)| (topic, seq, next))
            .collect()
    }

    /// Drop the waiting events `which` selects — queued, or waiting out a
    /// nack's delay — because the host no longer owns them (a Kafka
    /// partition moved to another consumer); returns how many. Deliveries in
    /// flight stay: refusing their settlements is the host's part.
    pub fn withdraw(&self, which: impl Fn(&Envelope) -> bool) -> usize {
        let (dropped, permits, waiters) = {
            let mut st = self.state.lock();
            let st = &mut *st;
            let before = st.delayed.len();
            st.delayed.retain(|_, e| !which(e));
            let mut dropped = before - st.delayed.len();
            let mut permits = 0;
            let mut heads = Vec::new();
            st.flows.retain(|flow, f| {
                let head = f.items.front().map(|i| i.order);
                f.items.retain(|i| {
                    let gone = which(&i.env);
                    if gone {
                        dropped += 1;
                        permits += usize::from(i.permit);
                    }
                    !gone
                });
                match f.items.front() {
                    Some(h) if !f.locked && Some(h.order) != head => heads.push(Ready {
                        priority: h.env.priority(),
                        order: Reverse(h.order),
                        flow: *flow,
                    }),
                    _ => {}
                }
                !f.items.is_empty() || f.locked
            });
            let waiters = if heads.is_empty() {
                Vec::new()
            } else {
                std::mem::take(&mut st.waiters)
            };
            st.ready.extend(heads);
            (dropped, permits, waiters)
        };
        wake(waiters);
        if permits > 0 {
            self.permits.add_permits(permits);
        }
        dropped
    }

    /// Close: member streams end, feeders stop. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        wake(waiters);
        let rooms: Vec<_> = self.rooms.lock().iter().filter_map(Weak::upgrade).collect();
        for room in rooms {
            room.wake();
        }
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether settling `env` must unlock its flow: the events a group
    /// orders ([`SubscribeSpec::orders`]: keyed ones, and keyless ones of a
    /// group ordered per topic).
    fn locks(&self, env: &Envelope) -> bool {
        self.spec.orders(env)
    }

    fn flow_of(&self, env: &Envelope) -> u64 {
        self.hasher.hash_one((env.topic().as_str(), env.key()))
    }

    /// Events just published, with room already reserved.
    pub(crate) fn push_published(&self, events: Vec<Arc<Envelope>>) {
        if events.is_empty() {
            return;
        }
        self.push_all(events, true);
    }

    /// Feed events, waiting for room; they become deliverable together (so
    /// priority orders them), in chunks of at most the buffer size. False
    /// once the queue is closed.
    pub async fn push(&self, events: Vec<Arc<Envelope>>) -> bool {
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(self.spec.buffer));
            let n = events.len() as u32;
            match self.permits.acquire_many(n).await {
                Ok(permits) => {
                    permits.forget();
                    self.push_all(std::mem::replace(&mut events, rest), true);
                }
                Err(_) => return false,
            }
        }
        !self.is_closed()
    }

    /// Feed events if there is room for all of them now (they become
    /// deliverable together); hands them back when there is not, or the
    /// queue is closed. For feeders on threads of their own that must not
    /// wait (a Kafka consumer that keeps polling while its queue is full).
    pub fn offer(&self, events: Vec<Arc<Envelope>>) -> std::result::Result<(), Vec<Arc<Envelope>>> {
        let Ok(n) = u32::try_from(events.len()) else {
            return Err(events);
        };
        match self.permits.try_acquire_many(n) {
            Ok(permits) => {
                permits.forget();
                self.push_all(events, true);
                Ok(())
            }
            Err(_) => Err(events),
        }
    }

    /// How many events [`offer`](Queue::offer) would take now.
    pub fn room(&self) -> usize {
        self.permits.available_permits()
    }

    /// Retained events replayed to a new subscription (no room reserved).
    pub(crate) fn push_replay(&self, events: Vec<Arc<Envelope>>) {
        if !events.is_empty() {
            self.push_all(events, false);
        }
    }

    fn push_all(&self, events: Vec<Arc<Envelope>>, permit: bool) {
        let waiters = {
            let mut st = self.state.lock();
            if self.is_closed() {
                return;
            }
            for env in events {
                let flow = self.flow_of(&env);
                let order = st.next_order;
                st.next_order += 1;
                let priority = env.priority();
                let f = st.flows.entry(flow).or_default();
                let schedule = f.items.is_empty() && !f.locked;
                f.items.push_back(Item { env, order, permit });
                if schedule {
                    st.ready.push(Ready {
                        priority,
                        order: Reverse(order),
                        flow,
                    });
                }
            }
            std::mem::take(&mut st.waiters)
        };
        wake(waiters);
    }

    /// Put a redelivery at the head of its flow and unlock the flow.
    fn push_front(&self, env: Arc<Envelope>, unlock: bool) {
        let waiters = {
            let mut st = self.state.lock();
            if self.is_closed() {
                if let Some(seq) = env.seq() {
                    st.handed_back.insert((env.topic().clone(), seq), env);
                }
                return;
            }
            let flow = self.flow_of(&env);
            let order = st.next_front;
            st.next_front -= 1;
            let priority = env.priority();
            let f = st.flows.entry(flow).or_default();
            f.items.push_front(Item {
                env,
                order,
                permit: false,
            });
            if unlock {
                f.locked = false;
            }
            if !f.locked {
                st.ready.push(Ready {
                    priority,
                    order: Reverse(order),
                    flow,
                });
            }
            std::mem::take(&mut st.waiters)
        };
        wake(waiters);
    }

    fn unlock(&self, env: &Envelope) {
        let waiters = {
            let mut st = self.state.lock();
            let flow = self.flow_of(env);
            let Some(f) = st.flows.get_mut(&flow) else {
                return;
            };
            f.locked = false;
            match f.items.front() {
                Some(head) => {
                    let r = Ready {
                        priority: head.env.priority(),
                        order: Reverse(head.order),
                        flow,
                    };
                    st.ready.push(r);
                }
                None => {
                    st.flows.remove(&flow);
                }
            }
            std::mem::take(&mut st.waiters)
        };
        wake(waiters);
    }

    /// Take the next deliverable event, or register `waker` for member `id`.
    fn pop(&self, id: u64, waker: &Waker) -> Option<Arc<Envelope>> {
        loop {
            let (item, expired) = {
                let mut st = self.state.lock();
                let Some(item) = Self::pop_ready(&mut st, &self.spec) else {
                    match st.waiters.iter_mut().find(|(m, _)| *m == id) {
                        Some((_, w)) => w.clone_from(waker),
                        None => st.waiters.push((id, waker.clone())),
                    }
                    return None;
                };
                let expired = item.env.expires_at().is_some_and(|t| t <= Utc::now());
                if !expired {
                    self.track(&mut st, &item.env);
                }
                (item, expired)
            };
            if item.permit {
                self.permits.add_permits(1);
            }
            if !expired {
                return Some(item.env);
            }
            // Never delivered: its flow stays locked (keyed, in a group)
            // until the dead letter is written, in a task of its own.
            drop(self.give_up(
                &item.env,
                ErrorCode::Timeout,
                "expired before delivery".into(),
                FailureSource::Expired,
            ));
        }
    }

    fn pop_ready(st: &mut State, spec: &SubscribeSpec) -> Option<Item> {
        while let Some(r) = st.ready.pop() {
            let Some(f) = st.flows.get_mut(&r.flow) else {
                continue;
            };
            if f.locked || f.items.front().map(|h| h.order) != Some(r.order.0) {
                continue;
            }
            let item = f.items.pop_front()?;
            if spec.orders(&item.env) {
                f.locked = true;
            } else if let Some(head) = f.items.front() {
                let next = Ready {
                    priority: head.env.priority(),
                    order: Reverse(head.order),
                    flow: r.flow,
                };
                st.ready.push(next);
            }
            if f.items.is_empty() && !f.locked {
                st.flows.remove(&r.flow);
            }
            return Some(item);
        }
        None
    }

    /// Note a delivery as in flight until settled or past its ack wait.
    fn track(&self, st: &mut State, env: &Arc<Envelope>) {
        st.inflight.insert(address(env));
        st.deadlines
            .push_back((Instant::now() + self.spec.ack_wait, env.clone()));
        if !st.sweeping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                st.sweeping = true;
                runtime.spawn(sweep(self.me.clone()));
            }
        }
    }

    /// Settle bookkeeping: false when the delivery is no longer in flight
    /// (its ack wait passed and it was redelivered), so the outcome is stale.
    fn untrack(&self, env: &Arc<Envelope>) -> bool {
        let mut st = self.state.lock();
        let was = st.inflight.remove(&address(env));
        trim(&mut st);
        was
    }

    /// Redeliver `envelope` with `attempt + 1` after `delay`, or dead-letter
    /// it when it has had `max_deliver` attempts (then the future says how
    /// the dead-lettering ended).
    fn retry(
        &self,
        envelope: &Arc<Envelope>,
        delay: Option<Duration>,
        reason: Option<String>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let locks = self.locks(envelope);
        let host = self.host.upgrade()?;
        let max_deliver = self.spec.max_deliver_or(host.max_deliver());
        if envelope.attempt() >= max_deliver {
            gave_up_at_max_deliver(
                self.spec.group.as_deref(),
                envelope.topic().as_str(),
                max_deliver,
            );
            let reason = format!(
                "gave up after {} attempts: {}",
                envelope.attempt(),
                reason.as_deref().unwrap_or("nacked")
            );
            return Some(self.give_up(
                envelope,
                ErrorCode::Internal,
                reason,
                FailureSource::Handler,
            ));
        }
        self.state
            .lock()
            .first_failures
            .entry(envelope.id())
            .or_insert_with(Utc::now);
        let mut again = Envelope::clone(envelope);
        again.attempt += 1;
        self.redeliver(Arc::new(again), delay, locks);
        None
    }

    /// Put `again` back at the front of its flow, after `delay` if any.
    fn redeliver(&self, again: Arc<Envelope>, delay: Option<Duration>, locks: bool) {
        match delay.filter(|d| !d.is_zero()) {
            None => self.push_front(again, locks),
            Some(delay) => {
                let Some(queue) = self.me.upgrade() else {
                    return;
                };
                let waiting = (again.topic().clone(), again.seq().unwrap_or(0));
                self.state
                    .lock()
                    .delayed
                    .insert(waiting.clone(), again.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let withdrawn = queue.state.lock().delayed.remove(&waiting).is_none();
                    if !withdrawn {
                        queue.push_front(again, locks);
                    }
                });
            }
        }
    }

    /// Dead-letter `envelope` (DESIGN.md §4.12): write its letter through the
    /// host, then settle it — tell the host, unlock its flow; when the write
    /// fails, deliver it again after [`DEAD_LETTER_RETRY_DELAY`] with one
    /// more attempt. It runs in a task of its own, counted in the host's
    /// [`DeadLetterWrites`], so it finishes when no one waits for it; the
    /// future says how it ended.
    fn give_up(
        &self,
        envelope: &Arc<Envelope>,
        code: ErrorCode,
        reason: String,
        source: FailureSource,
    ) -> BoxFuture<'static, Result<()>> {
        let (Some(host), Some(queue)) = (self.host.upgrade(), self.me.upgrade()) else {
            return Box::pin(std::future::ready(Err(Error::closed("dead-letter"))));
        };
        let first = self.forget_failure(envelope);
        let write = host.dead_letter(
            DeadLetter::new(Envelope::clone(envelope), source, code, reason)
                .with_group(self.group().map(str::to_owned))
                .with_first_failure(first),
        );
        let under_way = host.dead_letter_writes().start();
        let (env, locks) = (envelope.clone(), self.locks(envelope));
        let task = async move {
            let _under_way = under_way;
            match write.await {
                Ok(()) => {
                    let settled = match host.dead_lettered(&queue, &env) {
                        Some(settle) => settle.await,
                        None => Ok(()),
                    };
                    if locks {
                        queue.unlock(&env);
                    }
                    settled
                }
                Err(e) => {
                    tracing::warn!(
                        topic = %env.topic(),
                        seq = env.seq().unwrap_or(0),
                        group = queue.spec.group.as_deref(),
                        correlation_id = %env.correlation_id(),
                        causation_id = env.causation_id().map(tracing::field::display),
                        error = %e,
                        "a dead letter was not written; the message is delivered again"
                    );
                    let mut again = Envelope::clone(&env);
                    again.attempt += 1;
                    queue.redeliver(Arc::new(again), Some(DEAD_LETTER_RETRY_DELAY), locks);
                    Err(e)
                }
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Box::pin(task);
        };
        let task = runtime.spawn(task);
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(Error::internal(format!("dead-lettering stopped: {e}"))))
        })
    }

    /// Drop the record of `envelope`'s first failure, returning it.
    fn forget_failure(&self, envelope: &Envelope) -> Option<chrono::DateTime<Utc>> {
        let mut st = self.state.lock();
        if st.first_failures.is_empty() {
            return None;
        }
        st.first_failures.remove(&envelope.id())
    }

    fn forget_waiter(&self, id: u64) -> Option<Waker> {
        let mut st = self.state.lock();
        let pos = st.waiters.iter().position(|(m, _)| *m == id)?;
        Some(st.waiters.swap_remove(pos).1)
    }
}

impl Settle for Queue {
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        if !self.untrack(envelope) {
            // Its ack wait passed and it was delivered again: the outcome
            // changes nothing, and an ack says so, since the event comes
            // again (an `Ok` ack means it never does).
            return match outcome {
                Outcome::Ack => Some(Box::pin(async { Err(crate::backend::group::lease_lost()) })),
                _ => None,
            };
        }
        let locks = self.locks(envelope);
        match outcome {
            Outcome::Ack => {
                self.forget_failure(envelope);
                if locks {
                    self.unlock(envelope);
                }
                return self.host.upgrade()?.acked(self, envelope);
            }
            Outcome::Term {
                code,
                reason,
                source,
            } => return Some(self.give_up(envelope, code, reason, source)),
            Outcome::Nack { delay, reason } => return self.retry(envelope, delay, reason),
            Outcome::Defer { delay } => {
                // A new allocation: deliveries are tracked by address, and a
                // stale ack deadline of this delivery must not match the next.
                let again = Arc::new(Envelope::clone(envelope));
                self.redeliver(again, Some(delay), locks)
            }
        }
        None
    }
}

/// Wake the members that were waiting (outside the state lock).
fn wake(waiters: Vec<(u64, Waker)>) {
    for (_, w) in waiters {
        w.wake();
    }
}

fn address(env: &Arc<Envelope>) -> usize {
    Arc::as_ptr(env) as usize
}

/// Drop deadline entries at the front whose deliveries were settled.
fn trim(st: &mut State) {
    while let Some((_, env)) = st.deadlines.front() {
        if st.inflight.contains(&address(env)) {
            break;
        }
        st.deadlines.pop_front();
    }
}

/// Enforce a queue's ack deadlines; ends when nothing is in flight (the next
/// delivery starts a new sweeper) or the queue is gone.
async fn sweep(queue: Weak<Queue>) {
    enum Next {
        Redeliver(Arc<Envelope>),
        SleepUntil(Instant),
    }
    loop {
        let Some(q) = queue.upgrade() else {
            return;
        };
        let next = {
            let mut st = q.state.lock();
            trim(&mut st);
            match st.deadlines.front() {
                Some(_) if q.is_closed() => {
                    st.sweeping = false;
                    return;
                }
                None => {
                    st.sweeping = false;
                    return;
                }
                Some((at, _)) if *at <= Instant::now() => {
                    let (_, env) = st.deadlines.pop_front().expect("front exists");
                    st.inflight.remove(&address(&env));
                    Next::Redeliver(env)
                }
                Some((at, _)) => Next::SleepUntil(*at),
            }
        };
        match next {
            Next::Redeliver(env) => {
                let reason = format!("not settled within the ack wait of {:?}", q.spec.ack_wait);
                drop(q.retry(&env, None, Some(reason)));
            }
            Next::SleepUntil(at) => {
                drop(q);
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

struct Member {
    queue: Arc<Queue>,
    id: u64,
    closed: Arc<AtomicBool>,
    /// A group member's room (group-less members have their queue's
    /// `buffer` instead).
    room: Option<Arc<Room>>,
}

impl Stream for Member {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed.load(Ordering::Acquire) || self.queue.is_closed() {
            return Poll::Ready(None);
        }
        if let Some(room) = &self.room {
            if !room.has_room(cx.waker()) {
                // Woken by a settlement, or by this member or the queue
                // closing (each sets its flag before it wakes the room).
                if self.closed.load(Ordering::Acquire) || self.queue.is_closed() {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
        }
        match self.queue.pop(self.id, cx.waker()) {
            Some(env) => {
                let settle: Arc<dyn Settle> = match &self.room {
                    Some(room) => Arc::new(Slot::take(room, &self.queue)),
                    None => self.queue.clone(),
                };
                Poll::Ready(Some(Ok(Delivery::new(env, settle))))
            }
            None if self.closed.load(Ordering::Acquire) || self.queue.is_closed() => {
                Poll::Ready(None)
            }
            None => Poll::Pending,
        }
    }
}

/// A group member's `max_in_flight`: the deliveries it holds at once, from
/// hand-out until settled (the outcome given to the queue; a host's commit
/// of it is not waited for), or dropped.
struct Room {
    max: usize,
    held: AtomicUsize,
    /// The member's stream, waiting for room.
    waker: Mutex<Option<Waker>>,
}

impl Room {
    /// Whether the member may take a delivery; if not, `waker` is woken
    /// when it may.
    fn has_room(&self, waker: &Waker) -> bool {
        if self.held.load(Ordering::Acquire) < self.max {
            return true;
        }
        *self.waker.lock() = Some(waker.clone());
        // A settlement between the check and the waker stored.
        self.held.load(Ordering::Acquire) < self.max
    }

    fn wake(&self) {
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }
}

/// One delivery's share of its member's [`Room`], given back as it is
/// settled or dropped; settles through the queue.
struct Slot {
    queue: Arc<Queue>,
    room: Arc<Room>,
    held: AtomicBool,
}

impl Slot {
    fn take(room: &Arc<Room>, queue: &Arc<Queue>) -> Slot {
        room.held.fetch_add(1, Ordering::AcqRel);
        Slot {
            queue: queue.clone(),
            room: room.clone(),
            held: AtomicBool::new(true),
        }
    }

    fn give_back(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.room.held.fetch_sub(1, Ordering::AcqRel);
            self.room.wake();
        }
    }
}

impl Settle for Slot {
    fn settle(
        &self,
        envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let settling = self.queue.settle(envelope, outcome);
        self.give_back();
        settling
    }

    fn ack_with_effects(
        &self,
        envelope: &Arc<Envelope>,
        effects: Vec<Envelope>,
    ) -> std::result::Result<BoxFuture<'static, Result<()>>, Vec<Envelope>> {
        let acking = self.queue.ack_with_effects(envelope, effects)?;
        self.give_back();
        Ok(acking)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A new member of `queue`, as a subscription stream. The caller has counted
/// it with [`Queue::join`]. A member of a group holds at most
/// `max_in_flight` deliveries at once (its spec's; members of one queue
/// may differ); a group-less one is bounded by its queue's `buffer`.
pub fn member(queue: Arc<Queue>, max_in_flight: usize) -> Subscription {
    let id = queue.next_member.fetch_add(1, Ordering::Relaxed);
    let closed = Arc::new(AtomicBool::new(false));
    let room = queue.group().is_some().then(|| {
        let room = Arc::new(Room {
            max: max_in_flight.max(1),
            held: AtomicUsize::new(0),
            waker: Mutex::new(None),
        });
        let mut rooms = queue.rooms.lock();
        rooms.retain(|r| r.strong_count() > 0);
        rooms.push(Arc::downgrade(&room));
        room
    });
    let close = {
        let (queue, closed, room) = (queue.clone(), closed.clone(), room.clone());
        CloseHandle::new(move || {
            if closed.swap(true, Ordering::AcqRel) {
                return;
            }
            if let Some(host) = queue.host.upgrade() {
                host.leave(&queue);
            }
            if let Some(w) = queue.forget_waiter(id) {
                w.wake();
            }
            if let Some(room) = &room {
                room.wake();
            }
        })
    };
    Subscription::new(
        Member {
            queue,
            id,
            closed,
            room,
        },
        close,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::model::envelope::Kind;
    use crate::model::payload::Payload;
    use crate::model::topic::Pattern;

    /// A host that takes every dead letter (also for `open_queues`' tests).
    #[derive(Default)]
    pub(crate) struct Host {
        writes: DeadLetterWrites,
    }

    impl QueueHost for Host {
        fn max_deliver(&self) -> u32 {
            5
        }

        fn dead_letter(&self, _: DeadLetter) -> BoxFuture<'static, Result<()>> {
            Box::pin(std::future::ready(Ok(())))
        }

        fn dead_letter_writes(&self) -> &DeadLetterWrites {
            &self.writes
        }
    }

    fn event(seq: u64) -> Arc<Envelope> {
        let topic = Topic::new("t.a").unwrap();
        let payload = Payload::Bytes(bytes::Bytes::from_static(b"x"));
        let source: Arc<str> = Arc::from("test");
        Arc::new(Envelope::new_unchecked(&source, Kind::Event, topic, payload).with_seq(seq))
    }

    /// A queue of group `g` on `t.>`, and its host (kept alive by the caller).
    fn group_queue() -> (Arc<Queue>, Arc<dyn QueueHost>) {
        let host: Arc<dyn QueueHost> = Arc::new(Host::default());
        let mut spec = SubscribeSpec::new(vec![Pattern::new("t.>").unwrap()]);
        spec.group = Some("g".into());
        (Queue::new(spec, Arc::downgrade(&host)), host)
    }

    /// Records whether it was woken.
    struct Woken(AtomicBool);

    impl futures_util::task::ArcWake for Woken {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.store(true, Ordering::SeqCst);
        }
    }

    /// A group member at its `max_in_flight` takes nothing more until it
    /// settles, is woken by the settlement, and is woken when closed while
    /// it waits.
    #[tokio::test]
    async fn a_member_at_its_max_in_flight_waits_for_a_settlement() {
        let (queue, _host) = group_queue();
        queue.join();
        let mut sub = member(queue.clone(), 1);
        assert!(queue.push(vec![event(1), event(2)]).await);
        let first = sub.next().await.unwrap().unwrap();
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = futures_util::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(
            sub.poll_next_unpin(&mut cx).is_pending(),
            "a member holding its max_in_flight takes no more"
        );
        first.ack().await.unwrap();
        assert!(woken.0.swap(false, Ordering::SeqCst), "the ack wakes it");
        let Poll::Ready(Some(Ok(second))) = sub.poll_next_unpin(&mut cx) else {
            panic!("the next event comes after the ack");
        };
        assert_eq!(second.seq(), Some(2));
        assert!(sub.poll_next_unpin(&mut cx).is_pending());
        sub.close_handle().close();
        assert!(woken.0.swap(false, Ordering::SeqCst), "closing wakes it");
        assert!(matches!(sub.poll_next_unpin(&mut cx), Poll::Ready(None)));
        drop(second);

        // Without room, a member is not woken by new events, but is by the
        // queue closing.
        let (queue, _host) = group_queue();
        queue.join();
        let mut sub = member(queue.clone(), 1);
        assert!(queue.push(vec![event(1), event(2)]).await);
        let held = sub.next().await.unwrap().unwrap();
        assert!(sub.poll_next_unpin(&mut cx).is_pending());
        assert!(queue.push(vec![event(3)]).await);
        assert!(!woken.0.load(Ordering::SeqCst), "a new event leaves it be");
        queue.close();
        assert!(woken.0.load(Ordering::SeqCst), "the queue closing wakes it");
        assert!(matches!(sub.poll_next_unpin(&mut cx), Poll::Ready(None)));
        drop(held);
    }

    /// A delivery dropped after its queue closed (its group's last member
    /// left, and the host stepped down first) still tells a successor the
    /// attempt it comes as next.
    #[tokio::test]
    async fn a_delivery_handed_back_after_close_keeps_its_next_attempt() {
        let (queue, _host) = group_queue();
        queue.join();
        let mut member = member(queue.clone(), 8);
        assert!(queue.push(vec![event(1), event(2)]).await);
        let held = member.next().await.unwrap().unwrap();
        assert_eq!(held.attempt(), 1);
        queue.close();
        drop(held);
        let topic = Topic::new("t.a").unwrap();
        let mut held = queue.held_attempts();
        held.sort_by_key(|(_, seq, _)| *seq);
        assert_eq!(held, vec![(topic.clone(), 1, 2), (topic.clone(), 2, 1)]);
        let mut unsettled = queue.unsettled();
        unsettled.sort_by_key(|(_, seq)| *seq);
        assert_eq!(unsettled, vec![(topic.clone(), 1), (topic, 2)]);
    }
}

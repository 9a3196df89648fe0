//! Consumer groups on NATS: a leader per group over durable consumers.
//!
//! Owns the [`Leader`] of a group (started by [`Leader::of`]) and the
//! keeping of its lease, and what this process keeps of the groups it
//! leads ([`Leading`], held in the store's `Inner::groups`). JetStream
//! keeps a group's progress: each topic stream the group follows has a
//! durable consumer named for the group (explicit acks; its ack floor is
//! the group's offset, so the group resumes there after any restart). What
//! JetStream 2.9 cannot give — one event per key at a time, in order,
//! across members, while keyless events are shared freely, and priority
//! among waiting events — one process per group gives: the *leader*, which
//! holds the group's lease (`leader_lease`: renewed every second, gone 5 s
//! after its holder), pulls the durable consumers into a
//! [`herald::backend::queue::Queue`] (the same per-key locks, priority, ack
//! wait, redelivery and dead-lettering as every other transport), and
//! hands deliveries to members. An ack commits the JetStream message
//! (awaited: on the server before `Ok`; acks made together are committed
//! in groups, one confirmation each: [`acker`]); a dead letter is written to the
//! dead-letter stream (by the store, the host of every queue:
//! `dead_letters`), then the original is termed (or, when the write fails,
//! nacked so JetStream redelivers it). The leader keeps the messages it
//! holds alive with progress acks, so JetStream redelivers them only when
//! the leader is gone.
//!
//! Members in other processes reach the leader over request/reply: the
//! leader keeps what `protocol` defines of them, and `remote`, above this
//! module, opens members, serves the remote ones, and starts serving when
//! `Leader::of` says it started a leader; this module never imports
//! `remote`. A leader records its group's name, patterns and start as it
//! starts (`group_record`), so any process lists the group (`inspect`,
//! which also reads an event's delivery state). A group's start is fixed
//! when it is made (DESIGN.md §4.5): its first leader makes the group's
//! durable consumers on the streams there then (for `Latest`, after each
//! stream's last event) before it writes the first record, so every later
//! leader — after members came and went, after restarts — takes a stream
//! without the group's consumer for one made after the group, and reads it
//! from the start the record keeps (its beginning, for `Latest`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use futures_util::{FutureExt, StreamExt};
use herald::backend::dead_lettering::DeadLetterWrites;
use herald::backend::queue::{self, Queue, QueueHost};
use herald::backend::BoxFuture;
use herald::{
    DeadLetter, DeliveryState, Envelope, Error, ErrorCode, FailureSource, Result, StartPosition,
    SubscribeSpec, Subscription, Topic,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec;
use crate::conn::Inner;
use crate::errors;
use crate::gather::Gather;
use crate::leader_lease::{Lease, Taken};
use crate::protocol::Remotes;
use crate::tail::{self, Streams};

/// How long a leader's lease lives without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a leader renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// The durable consumers' ack wait: how long after its leader is gone
/// JetStream redelivers what the leader held.
const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often the leader tells JetStream it still works on what it holds.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long a leader's pull request lives. One the leader no longer reads
/// (after it stopped) still takes messages until then, so a leader that
/// steps down waits this long before handing its messages back.
const PULL_EXPIRY: Duration = Duration::from_secs(1);
/// How many of its latest acks a leader remembers (see `Leader::feed`).
const RECENT_ACKS: usize = 100_000;
/// Most messages a durable consumer has out to its leader unacked.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most messages the leader hands its queue at once.
const FEED_BATCH: usize = 256;

/// What this process keeps of the groups it leads, per store (in
/// `Inner::groups`).
#[derive(Default)]
pub(crate) struct Leading {
    /// The groups this process leads.
    leaders: Mutex<HashMap<String, Arc<Leader>>>,
    /// Groups whose leader here is stepping down, and when it is done.
    stepping_down: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Per group, the events its leaders here acked lately.
    recent_acks: Mutex<HashMap<String, Arc<Mutex<RecentAcks>>>>,
    /// Held while this process tries to become a group's leader.
    starting: tokio::sync::Mutex<()>,
}

/// What `inner`'s process keeps of the groups it leads.
fn leading(inner: &Inner) -> &Leading {
    inner.groups.get()
}

/// This process's leader of `group`, if it leads it.
pub(crate) fn leader(inner: &Inner, group: &str) -> Option<Arc<Leader>> {
    leading(inner).leader(group)
}

/// Every leader in this process steps down (the store closes).
pub(crate) async fn step_down_all(inner: &Inner) {
    let leaders: Vec<_> = leading(inner)
        .lock_leaders()
        .drain()
        .map(|(_, l)| l)
        .collect();
    for leader in leaders {
        leader.step_down().await;
    }
}

impl Leading {
    fn lock_leaders(&self) -> MutexGuard<'_, HashMap<String, Arc<Leader>>> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leader(&self, group: &str) -> Option<Arc<Leader>> {
        self.lock_leaders().get(group).cloned()
    }

    fn lead(&self, group: &str, leader: &Arc<Leader>) {
        self.lock_leaders().insert(group.to_owned(), leader.clone());
    }

    fn unlead(&self, group: &str) {
        self.lock_leaders().remove(group);
    }

    /// This process's leader of `group` steps down: `done` turns `true`
    /// when it has handed back what it held and given up the lease.
    fn stepping_down(&self, group: &str, done: watch::Receiver<bool>) {
        self.lock_stepping_down().insert(group.to_owned(), done);
    }

    /// The step-down `done` of `group` is over.
    fn stepped_down(&self, group: &str, done: &watch::Receiver<bool>) {
        let mut stepping = self.lock_stepping_down();
        if stepping.get(group).is_some_and(|d| d.same_channel(done)) {
            stepping.remove(group);
        }
    }

    /// Wait until this process's leader of `group`, if one is stepping
    /// down, is done, so the next leader here reads its handover note.
    async fn handed_over(&self, group: &str) {
        let done = self.lock_stepping_down().get(group).cloned();
        if let Some(mut done) = done {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    fn lock_stepping_down(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.stepping_down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The acks of `group`'s leaders in this process.
    fn recent_acks(&self, group: &str) -> Arc<Mutex<RecentAcks>> {
        self.recent_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_owned())
            .or_default()
            .clone()
    }
}

/// The leader of one group in this process.
pub(crate) struct Leader {
    inner: Weak<Inner>,
    group: String,
    /// Where the group started when it was made (its record keeps it).
    start: StartPosition,
    /// The durable consumers' name.
    consumer: String,
    queue: Arc<Queue>,
    /// The JetStream messages behind the events the queue holds, by topic
    /// and seq.
    held: Mutex<HashMap<(Topic, u64), async_nats::jetstream::Message>>,
    /// From the previous leader's handover note: the attempt each event
    /// it held would have been delivered as next.
    attempts: HashMap<(String, u64), u32>,
    /// The events this process's leaders of the group acked lately: a
    /// server that crashed before writing an ack redelivers the event after
    /// its restart, and the leader acks it again instead of delivering it.
    recent_acks: Arc<Mutex<RecentAcks>>,
    /// Its members in other processes (served by `remote`).
    remotes: Remotes,
    /// The group's lease, while held.
    lease: Mutex<Option<Lease>>,
    /// Set when the leader stops: its tasks end.
    stop: tokio::sync::watch::Sender<bool>,
    /// The store's dead-letter writes (the queue counts its own in them).
    dead_letter_writes: DeadLetterWrites,
    /// Where acks go to be committed in groups ([`acker`]).
    acks: mpsc::UnboundedSender<PendingAck>,
}

impl Leader {
    /// This process's leader of `group`, started now if nobody leads it,
    /// and whether it started now (its caller then serves the group's
    /// members in other processes: `remote::serve`); `None` when another
    /// process leads the group.
    pub(crate) async fn of(
        inner: &Arc<Inner>,
        group: &str,
        spec: &SubscribeSpec,
    ) -> Result<Option<(Arc<Leader>, bool)>> {
        let leading = leading(inner);
        // One attempt to lead at a time in this process, so its members
        // share one leader.
        let _starting = leading.starting.lock().await;
        if let Some(leader) = leading.leader(group) {
            herald::backend::group::check_member(
                group,
                &herald::backend::group::patterns_text(leader.queue.spec()),
                herald::backend::group::kind_bits(leader.queue.spec()),
                spec,
            )?;
            return Ok(Some((leader, false)));
        }
        // A leader here that is stepping down first writes what the next
        // should know (its handover note).
        leading.handed_over(group).await;
        Lease::prepare(inner, LEASE_TTL).await?;
        let lease = match Lease::take(inner, &inner.names.consumer(group), &inner.member_id).await?
        {
            Taken::Held(lease) => lease,
            Taken::Busy => return Ok(None),
        };
        // A group's start is fixed when it is made: a record says it was.
        let made = match crate::group_record::made_at(inner, group, spec).await {
            Ok(made) => made,
            Err(e) => {
                lease.release(inner).await;
                return Err(e);
            }
        };
        let attempts = handover::read(inner, &inner.names.consumer(group)).await;
        let (acks, to_commit) = Gather::channel(ACKS_IN_FLIGHT, ACK_BATCH);
        tokio::spawn(acker(to_commit));
        let leader = Arc::new_cyclic(|me: &Weak<Leader>| Leader {
            acks,
            start: made.unwrap_or(spec.start),
            attempts,
            inner: Arc::downgrade(inner),
            group: group.to_owned(),
            consumer: inner.names.consumer(group),
            queue: Queue::new(spec.clone(), me.clone() as Weak<dyn QueueHost>),
            held: Mutex::new(HashMap::new()),
            lease: Mutex::new(None),
            remotes: Default::default(),
            recent_acks: leading.recent_acks(group),
            stop: tokio::sync::watch::channel(false).0,
            dead_letter_writes: inner.dead_letter_writes.clone(),
        });
        // Leading first: a close from now on steps this leader down, and
        // one that came before refuses its queue here.
        leading.lead(group, &leader);
        if let Err(e) = inner.register(&leader.queue) {
            leading.unlead(group);
            lease.release(inner).await;
            return Err(e);
        }
        let followed = async {
            let streams = Streams::follow(inner, spec).await?;
            let starts: Vec<(String, DeliverPolicy)> = streams
                .existing
                .iter()
                .map(|found| {
                    let policy = match leader.start {
                        // Made now: it starts after what each stream holds.
                        StartPosition::Latest if made.is_none() => DeliverPolicy::ByStartSequence {
                            start_sequence: found.last_seq + 1,
                        },
                        // Made before: a stream without the group's
                        // consumer came after it, and is read from its
                        // start (a consumer made before resumes as it is).
                        start => tail::policy(&start),
                    };
                    (found.name.clone(), policy)
                })
                .collect();
            if made.is_none() {
                // The consumers fix where the group starts on the streams
                // there now; they exist before the record says the group
                // does, so a later leader takes a stream without one for
                // a stream made after the group.
                leader.make_consumers(inner, &starts).await?;
            }
            crate::group_record::record(inner, group, spec, leader.start).await?;
            Ok::<_, herald::Error>((streams.created, starts))
        };
        let (created, starts) = match followed.await {
            Ok(s) => s,
            Err(e) => {
                leader.step_down().await;
                lease.release(inner).await;
                return Err(e);
            }
        };
        for (stream, policy) in starts {
            tokio::spawn(leader.clone().pull(stream, policy));
        }
        tokio::spawn(leader.clone().follow_new(created));
        tokio::spawn(leader.clone().keep_lease(lease));
        tokio::spawn(leader.clone().keep_progress());
        Ok(Some((leader, true)))
    }

    /// A new member of the leader's queue.
    pub(crate) fn member(&self) -> Subscription {
        self.queue.join();
        queue::member(self.queue.clone())
    }

    pub(crate) fn inner(&self) -> Option<Arc<Inner>> {
        self.inner.upgrade()
    }

    pub(crate) fn consumer(&self) -> &str {
        &self.consumer
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn spec(&self) -> &SubscribeSpec {
        self.queue.spec()
    }

    /// What one member may take now (`Queue::fair_share`).
    pub(crate) fn fair_share(&self) -> usize {
        self.queue.fair_share()
    }

    pub(crate) fn remotes(&self) -> &Remotes {
        &self.remotes
    }

    /// Changes to `true` when the leader stops.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stop leading: close the queue and hand back everything held (a nack,
    /// so JetStream redelivers it to the next leader at once), give up the
    /// lease.
    pub(crate) async fn step_down(&self) {
        if self.stop.send_replace(true) {
            return;
        }
        self.queue.close();
        let Some(inner) = self.inner() else { return };
        let (done, handed) = tokio::sync::watch::channel(false);
        let leading = leading(&inner);
        leading.stepping_down(&self.group, handed.clone());
        leading.unlead(&self.group);
        // Messages handed back now would go to the pull requests still out.
        tokio::time::sleep(PULL_EXPIRY + Duration::from_millis(100)).await;
        let held: Vec<_> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        // Next is what the queue would have delivered it as; one that
        // never reached the queue keeps the attempt it came with.
        let in_queue: HashMap<(Topic, u64), u32> = self
            .queue
            .held_attempts()
            .into_iter()
            .map(|(topic, seq, next)| ((topic, seq), next))
            .collect();
        let note: Vec<_> = held
            .iter()
            .filter_map(|((topic, seq), msg)| {
                let next = in_queue.get(&(topic.clone(), *seq)).copied().or_else(|| {
                    let delivered = msg.info().ok()?.delivered;
                    Some(self.attempt(&inner, &msg.subject, *seq, delivered))
                })?;
                Some((topic.as_str().to_owned(), *seq, next))
            })
            .collect();
        handover::write(&inner, &self.consumer, note).await;
        for (_, msg) in held {
            // A nack that is lost only delays the redelivery to the ack wait.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lease) = lease {
            lease.release(&inner).await;
        }
        let _ = done.send(true);
        leading.stepped_down(&self.group, &handed);
    }

    /// Renew the lease; step down when it is lost.
    async fn keep_lease(self: Arc<Self>, lease: Lease) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(RENEW_EVERY);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(inner) = self.inner() else { return };
            let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(mut lease) = lease else { return };
            let renewed = lease.renew(&inner).await;
            if self.stopped() {
                // `step_down` ran while this held the lease.
                lease.release(&inner).await;
                return;
            }
            *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
            match renewed {
                Ok(true) => failing = false,
                Ok(false) => {
                    // Aged out while the server was away, or taken.
                    match Lease::take(&inner, &self.consumer, &inner.member_id).await {
                        Ok(Taken::Held(again)) => {
                            *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(again);
                        }
                        Ok(Taken::Busy) => {
                            tracing::warn!(
                                group = self.group,
                                "lost the group's lease; stepping down"
                            );
                            self.step_down().await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(group = self.group, error = %e, "cannot take the group's lease back");
                        }
                    }
                }
                Err(e) => {
                    // Nothing flows while the server is away; lead on.
                    if !failing {
                        tracing::warn!(group = self.group, error = %e, "cannot renew the group's lease");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Keep JetStream from redelivering what the leader holds.
    async fn keep_progress(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let held: Vec<_> = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for msg in held {
                // A lost progress ack is repeated on the next tick.
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }

    /// Pull from the durable consumers of topic streams made from now on.
    async fn follow_new(self: Arc<Self>, mut created: async_nats::Subscriber) {
        let mut stop = self.stop.subscribe();
        loop {
            let msg = tokio::select! {
                m = created.next() => m,
                _ = stop.changed() => return,
            };
            let Some(msg) = msg else { return };
            let Ok(advisory) = serde_json::from_slice::<tail::Created>(&msg.payload) else {
                continue;
            };
            let Some(inner) = self.inner() else { return };
            if tail::followed_topic(&inner, self.queue.spec(), &advisory.stream)
                .await
                .is_some()
            {
                let start = tail::policy(&self.start);
                tokio::spawn(self.clone().pull(advisory.stream, start));
            }
        }
    }

    /// Feed the queue from the group's durable consumer on `stream` (made
    /// with `start` if new), again after every failure, until stopped.
    async fn pull(self: Arc<Self>, stream: String, start: DeliverPolicy) {
        let mut stop = self.stop.subscribe();
        let mut retry = Duration::from_millis(50);
        while !self.stopped() {
            let Some(inner) = self.inner() else { return };
            let messages = match self.consume(&inner, &stream, start).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(group = self.group, stream, error = %e, "cannot read a group's consumer; retrying");
                    drop(inner);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            drop(inner);
            retry = Duration::from_millis(50);
            tokio::select! {
                _ = self.clone().feed(messages) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Make the group's durable consumers on `starts` (stream, where to
    /// start) that do not exist yet, a few at a time.
    async fn make_consumers(
        &self,
        inner: &Inner,
        starts: &[(String, DeliverPolicy)],
    ) -> Result<()> {
        for some in starts.chunks(16) {
            let mut making = Vec::with_capacity(some.len());
            for (stream, start) in some {
                making.push(self.durable_consumer(inner, stream, *start));
            }
            futures_util::future::try_join_all(making).await?;
        }
        Ok(())
    }

    async fn consume(
        &self,
        inner: &Inner,
        stream: &str,
        start: DeliverPolicy,
    ) -> Result<pull::Stream> {
        self.durable_consumer(inner, stream, start)
            .await?
            .stream()
            .expires(PULL_EXPIRY)
            .heartbeat(PULL_EXPIRY / 4)
            .messages()
            .await
            .map_err(|e| self.unavailable(stream, &e))
    }

    fn unavailable(&self, stream: &str, e: &dyn std::fmt::Display) -> Error {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("open group {:?} on stream {stream}", self.group),
            e,
        )
    }

    /// The group's durable consumer on `stream`, made with `start` if new.
    async fn durable_consumer(
        &self,
        inner: &Inner,
        stream: &str,
        start: DeliverPolicy,
    ) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>> {
        let unavailable = |e: &dyn std::fmt::Display| self.unavailable(stream, e);
        let s = inner
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| unavailable(&e))?;
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = s
            .get_or_create_consumer(
                &self.consumer,
                pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    description: Some(format!("herald consumer group {:?}", self.group)),
                    deliver_policy: start,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: CONSUMER_ACK_WAIT,
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(consumer)
    }

    /// Push what the consumer delivers into the queue until it fails: the
    /// messages received by the time the queue is offered the first go
    /// with it, up to [`FEED_BATCH`] (one wake-up of the members, not one
    /// per message).
    ///
    /// A missed idle heartbeat is not a failure: the stream reports one
    /// whenever it was not polled for two heartbeats, which is what a full
    /// queue does to this loop, and it sends its pull requests again after
    /// a reconnect by itself. Re-reading would drop the messages the old
    /// stream had already received, and JetStream would deliver them again
    /// only after the ack wait, behind later events of their keys.
    async fn feed(self: Arc<Self>, mut messages: pull::Stream) {
        while let Some(first) = messages.next().await {
            let mut received = vec![first];
            while received.len() < FEED_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(next)) => received.push(next),
                    _ => break,
                }
            }
            let mut events = Vec::with_capacity(received.len());
            let mut failed = false;
            for msg in received {
                match msg {
                    Ok(msg) => {
                        if let Some(env) = self.admit(msg).await {
                            events.push(env);
                        }
                    }
                    Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {}
                    Err(e) => {
                        tracing::warn!(group = self.group, error = %e, "a group's consumer failed; re-reading");
                        failed = true;
                    }
                }
            }
            if (!events.is_empty() && !self.queue.push(events).await) || failed {
                return;
            }
        }
    }

    /// The event a message the consumer delivered carries, if it is the
    /// queue's: one not the group's, acked or on its way to an ack, or
    /// unreadable (dead-lettered) is settled here instead; a redelivery of
    /// one the queue holds only renews the handle to ack it by.
    async fn admit(&self, msg: async_nats::jetstream::Message) -> Option<Arc<Envelope>> {
        let inner = self.inner()?;
        let info = msg.info().ok()?;
        let (seq, time_ms) = (info.stream_sequence, codec::millis(info.published));
        let attempt = self.attempt(&inner, &msg.subject, seq, info.delivered);
        let env = match codec::envelope(
            &inner,
            &msg.subject,
            msg.headers.as_ref(),
            msg.payload.clone(),
            seq,
            time_ms,
            attempt,
        )
        .await
        {
            Ok(env) => env,
            Err(e) => {
                self.undecodable(&inner, &msg, seq, time_ms, e);
                return None;
            }
        };
        drop(inner);
        let spec = self.queue.spec();
        if !spec.wants(env.topic().as_str(), env.kind()) || !self.start.admits(&env) {
            // Not the group's: done with it.
            let _ = msg.ack().await;
            return None;
        }
        let at = (env.topic().clone(), seq);
        let known = self
            .recent_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state(&at);
        match known {
            // Acked before a server crash lost the ack: ack again.
            Some(true) => {
                let _ = msg.ack().await;
                return None;
            }
            // Its ack is on the way; should that fail, JetStream
            // delivers it again after the ack wait.
            Some(false) => return None,
            None => {}
        }
        let fresh = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.insert(at, msg).is_none()
        };
        fresh.then(|| Arc::new(env))
    }

    /// Dead-letter a message herald cannot read (its body kept as it is).
    fn undecodable(
        &self,
        inner: &Inner,
        msg: &async_nats::jetstream::Message,
        seq: u64,
        time_ms: i64,
        error: Error,
    ) {
        let Some(topic) = inner.names.topic_of(&msg.subject) else {
            return;
        };
        let origin = herald::backend::headers::Origin {
            time_ms,
            unique: seq,
            source: codec::PLAIN_SOURCE,
        };
        let Ok(env) =
            herald::backend::headers::decode(topic.clone(), [], msg.payload.clone(), origin)
        else {
            return;
        };
        let reason = format!("cannot read the message: {}", error.message());
        let write = self.dead_letter(
            DeadLetter::new(
                env.with_seq(seq),
                FailureSource::Decode,
                ErrorCode::Validation,
                reason,
            )
            .with_group(self.group.clone())
            .with_attempts(1),
        );
        // Not the queue's: written here, then termed; a write that fails
        // naks it, so JetStream brings it back to be dead-lettered again.
        let under_way = self.dead_letter_writes.start();
        let msg = msg.clone();
        tokio::spawn(async move {
            let _under_way = under_way;
            let settle = match write.await {
                Ok(()) => AckKind::Term,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %topic, seq, "the dead letter of an unreadable message was not written; it comes again");
                    AckKind::Nak(None)
                }
            };
            if let Err(e) = msg.double_ack_with(settle).await {
                tracing::warn!(error = %e, topic = %topic, seq, "an unreadable message was not settled; it comes again");
            }
        });
    }

    /// The attempt of a delivery JetStream made for the `delivered`th
    /// time: the first is attempt 1; a later one is what the previous
    /// leader's note says, or (a leader that left no note) `delivered`.
    fn attempt(&self, inner: &Inner, subject: &str, seq: u64, delivered: i64) -> u32 {
        let delivered = delivered.clamp(1, i64::from(u32::MAX)) as u32;
        if delivered == 1 {
            return 1;
        }
        inner
            .names
            .topic_of(subject)
            .and_then(|t| self.attempts.get(&(t.as_str().to_owned(), seq)).copied())
            .unwrap_or(delivered)
    }

    fn take_held(&self, env: &Envelope) -> Option<async_nats::jetstream::Message> {
        let at = (env.topic().clone(), env.seq()?);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&at)
    }

    /// Where event `seq` of `topic` stands for this group, as far as the
    /// queue knows: in it or delivered from it.
    pub(crate) fn state_of(&self, topic: &Topic, seq: u64) -> Option<DeliveryState> {
        self.queue.state_of(topic, seq)
    }
}

impl QueueHost for Leader {
    fn max_deliver(&self) -> u32 {
        self.inner()
            .map_or(crate::DEFAULT_MAX_DELIVER, |i| i.config.deliveries())
    }

    /// Written by the store, the host of every queue (`dead_letters`).
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        match self.inner() {
            Some(inner) => QueueHost::dead_letter(&*inner, letter),
            None => Box::pin(async { Err(errors::closed()) }),
        }
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }

    /// Term the JetStream message, so the group's consumer never delivers
    /// it again (a term that fails leaves it to come back after the ack
    /// wait, and be dead-lettered again).
    fn dead_lettered(
        &self,
        _queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let topic = envelope.topic().clone();
        let msg = self.take_held(envelope)?;
        Some(Box::pin(async move {
            msg.double_ack_with(AckKind::Term).await.map_err(|e| {
                errors::nats(
                    ErrorCode::Unavailable,
                    &format!("term a dead-lettered event of `{topic}`"),
                    e,
                )
            })
        }))
    }

    fn acked(
        &self,
        _queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let topic = envelope.topic().clone();
        let Some(msg) = self.take_held(envelope) else {
            // Handed back when the leader stepped down: it comes again.
            return Some(Box::pin(async {
                Err(herald::backend::group::lease_lost())
            }));
        };
        // Remembered before the ack goes out: a redelivery that overtakes
        // it (the server came back and replays) is not delivered again.
        let at = (topic.clone(), envelope.seq().unwrap_or(0));
        let recent = self.recent_acks.clone();
        recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .insert(at.clone());
        let (confirm, confirmed) = oneshot::channel();
        let sent = self.acks.send((msg, confirm)).is_ok();
        Some(Box::pin(async move {
            let acked = match sent {
                true => confirmed
                    .await
                    .unwrap_or_else(|_| Err("the group's leader stopped".to_owned())),
                false => Err("the group's leader stopped".to_owned()),
            };
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.pending.remove(&at);
            if let Err(e) = acked {
                return Err(errors::nats(
                    ErrorCode::Unavailable,
                    &format!("ack an event of `{topic}`"),
                    e,
                ));
            }
            recent.insert(at);
            Ok(())
        }))
    }

    fn leave(&self, queue: &Arc<Queue>) {
        if queue.leave() {
            let me = self.queue.clone();
            if let Some(inner) = self.inner() {
                if let Some(leader) = leading(&inner).leader(&self.group) {
                    if Arc::ptr_eq(&leader.queue, &me) {
                        tokio::spawn(async move { leader.step_down().await });
                    }
                }
            }
        }
    }
}

/// An ack on its way to JetStream, and where its confirmation (or why
/// there is none) goes.
type PendingAck = (
    async_nats::jetstream::Message,
    oneshot::Sender<std::result::Result<(), String>>,
);

/// Most acks one confirmation covers.
const ACK_BATCH: usize = 256;
/// Confirmations a leader waits for at once; acks made meanwhile gather.
const ACKS_IN_FLIGHT: usize = 4;

/// Commit a leader's acks in groups: per durable consumer, every ack of a
/// group but the last goes out plain, and the last asks for the server's
/// confirmation (`double_ack`), which answers the whole group. That holds
/// because a server applies one connection's acks to one consumer in the
/// order sent (nats-server queues a consumer's acks and applies them one
/// by one, `processInboundAcks`), so the reply to the last means every
/// earlier one was applied: one reply per group, not one per event. An
/// ack is confirmed before its `Ok`, as before; a plain ack that fails to
/// go out fails its whole group. Ends when the leader is gone.
async fn acker(mut to_commit: Gather<PendingAck>) {
    while let Some((permit, batch)) = to_commit.next().await {
        let mut by_consumer: HashMap<(String, String), Vec<PendingAck>> = HashMap::new();
        for pending in batch {
            let at = pending
                .0
                .info()
                .map(|i| (i.stream.to_owned(), i.consumer.to_owned()))
                .unwrap_or_default();
            by_consumer.entry(at).or_default().push(pending);
        }
        let mut confirmations = Vec::with_capacity(by_consumer.len());
        for (_, mut group) in by_consumer {
            let Some((last, _)) = group.last() else {
                continue;
            };
            let last = last.clone();
            let mut sent = Ok(());
            for (msg, _) in &group[..group.len() - 1] {
                if let Err(e) = msg.ack().await {
                    sent = Err(e.to_string());
                    break;
                }
            }
            confirmations.push(async move {
                let confirmed = match sent {
                    Ok(()) => last.double_ack().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                for (_, answer) in group.drain(..) {
                    let _ = answer.send(confirmed.clone());
                }
            });
        }
        tokio::spawn(async move {
            futures_util::future::join_all(confirmations).await;
            drop(permit);
        });
    }
}

/// What a leader that steps down tells the next one: the attempt each event
/// it held would next be delivered as (JetStream counts every delivery to
/// a leader, including those of events no member ever got). One note per
/// group, the last message on `P.$handover.<consumer>` of stream
/// `S_HANDOVERS`; a leader that crashed leaves none, and its events count
/// JetStream's deliveries.
mod handover {
    use std::collections::HashMap;

    use async_nats::jetstream::stream;

    use crate::conn::Inner;

    /// Write the note; a note that cannot be written is logged (attempts
    /// then count JetStream's deliveries).
    pub(super) async fn write(inner: &Inner, consumer: &str, mut note: Vec<(String, u64, u32)>) {
        let max = inner.client.server_info().max_payload;
        let mut body = serde_json::to_vec(&note).unwrap_or_default();
        if body.len() > max {
            // Events no member got go first: they only count one attempt more.
            note.retain(|(_, _, next)| *next > 1);
            body = serde_json::to_vec(&note).unwrap_or_default();
        }
        if body.len() > max {
            tracing::warn!(
                consumer,
                "a handover note is too large; attempts will count JetStream's deliveries"
            );
            return;
        }
        let written = async {
            prepare(inner).await?;
            let subject = inner.names.handover_subject(consumer);
            inner.js.publish(subject, body.into()).await?.await?;
            Ok::<_, async_nats::Error>(())
        };
        if let Err(e) = written.await {
            tracing::warn!(consumer, error = %e, "a handover note was not written; attempts will count JetStream's deliveries");
        }
    }

    /// The last note for `consumer`, empty when there is none.
    pub(super) async fn read(inner: &Inner, consumer: &str) -> HashMap<(String, u64), u32> {
        let read = async {
            prepare(inner).await?;
            let s = inner
                .js
                .get_stream_no_info(inner.names.handover_stream())
                .await?;
            let msg = s
                .get_last_raw_message_by_subject(&inner.names.handover_subject(consumer))
                .await?;
            let note: Vec<(String, u64, u32)> = serde_json::from_slice(&msg.payload)?;
            Ok::<_, async_nats::Error>(note)
        };
        match read.await {
            Ok(note) => note.into_iter().map(|(t, s, a)| ((t, s), a)).collect(),
            Err(_) => HashMap::new(),
        }
    }

    async fn prepare(inner: &Inner) -> Result<(), async_nats::Error> {
        let config = stream::Config {
            name: inner.names.handover_stream(),
            subjects: vec![inner.names.handover_subjects()],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: inner.config.replica_count(),
            ..Default::default()
        };
        inner.js.create_or_update_stream(config).await?;
        Ok(())
    }
}

/// The last [`RECENT_ACKS`] events a group's leaders in this process
/// acked, and the acks on their way.
#[derive(Default)]
pub(crate) struct RecentAcks {
    set: std::collections::HashSet<(Topic, u64)>,
    order: std::collections::VecDeque<(Topic, u64)>,
    pending: std::collections::HashSet<(Topic, u64)>,
}

impl RecentAcks {
    fn insert(&mut self, at: (Topic, u64)) {
        if self.set.insert(at.clone()) {
            self.order.push_back(at);
            if self.order.len() > RECENT_ACKS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    /// `Some(true)` for an event acked, `Some(false)` for one whose ack is
    /// on its way, `None` otherwise.
    fn state(&self, at: &(Topic, u64)) -> Option<bool> {
        if self.set.contains(at) {
            Some(true)
        } else if self.pending.contains(at) {
            Some(false)
        } else {
            None
        }
    }
}

//! Consumer groups on NATS: a leader per group over durable consumers.
//!
//! Owns [`subscribe`] for subscriptions with a group, the [`Leader`] of a
//! group and its lease. JetStream keeps a group's progress: each topic
//! stream the group follows has a durable consumer named for the group
//! (explicit acks; its ack floor is the group's offset, so the group resumes
//! there after any restart). What JetStream 2.9 cannot give — one event per
//! key at a time, in order, across members, while keyless events are shared
//! freely, and priority among waiting events — one process per group gives:
//! the *leader*, which holds the group's lease (`lease`: renewed every
//! second, gone 5 s after its holder), pulls the
//! durable consumers into a [`herald::queue::Queue`] (the same per-key
//! locks, priority, ack wait, redelivery and dead-lettering as every other
//! transport), and hands deliveries to members. An ack commits the
//! JetStream message (awaited: durable before `Ok`); a dead letter is
//! written to the dead-letter stream, then the original is termed (or, when
//! the write fails, nacked so JetStream redelivers it). The leader keeps
//! the messages it holds alive with progress acks, so JetStream redelivers
//! them only when the leader is gone. Members in other processes reach the
//! leader over request/reply (`remote`).
//! A leader records its group's name, patterns and start as it starts, so
//! any process lists the group (`inspect`). A group's start is fixed when
//! it is made (DESIGN.md §4.5): its first leader makes the group's durable
//! consumers on the streams there then (for `Latest`, after each stream's
//! last event) before it writes the first record, so every later leader —
//! after members came and went, after restarts — takes a stream without
//! the group's consumer for one made after the group, and reads it from
//! the start the record keeps (its beginning, for `Latest`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use futures_util::StreamExt;
use herald::delivery::BoxFuture;
use herald::queue::{self, Queue, QueueHost};
use herald::{
    DeadLetter, DeliveryState, Envelope, Error, ErrorCode, FailureSource, Result, StartPosition,
    SubscribeSpec, Subscription, Topic,
};

use crate::codec;
use crate::errors;
use crate::lease::{Lease, Taken};
use crate::store::Inner;
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

/// Open a member of `spec`'s group: of this process's leader when it leads
/// the group (becoming the leader if nobody does), else of the leader
/// elsewhere; either way it follows the lead when it moves.
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let local = subscribe_local(inner, spec.clone()).await?;
    let consumer = inner
        .names
        .consumer(spec.group.as_deref().unwrap_or_default());
    Ok(crate::remote::member(inner, spec, consumer, local))
}

/// A member of this process's leader of `spec`'s group, taking the lease
/// if nobody holds it; `None` when another process leads the group.
pub(crate) async fn subscribe_local(
    inner: &Arc<Inner>,
    spec: SubscribeSpec,
) -> Result<Option<Subscription>> {
    let group = spec.group.clone().unwrap_or_default();
    let Some(leader) = Leader::of(inner, &group, &spec).await? else {
        return Ok(None);
    };
    leader.queue.join();
    Ok(Some(queue::member(leader.queue.clone())))
}

/// The leader of one group in this process.
pub(crate) struct Leader {
    inner: Weak<Inner>,
    group: String,
    /// Where the group started when it was made (its record keeps it).
    start: StartPosition,
    /// The durable consumers' name.
    consumer: String,
    pub(crate) queue: Arc<Queue>,
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
    /// Its members in other processes.
    remotes: crate::remote::Remotes,
    /// The group's lease, while held.
    lease: Mutex<Option<Lease>>,
    /// Set when the leader stops: its tasks end.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Leader {
    /// This process's leader of `group`, started now if nobody leads it.
    async fn of(
        inner: &Arc<Inner>,
        group: &str,
        spec: &SubscribeSpec,
    ) -> Result<Option<Arc<Leader>>> {
        // One attempt to lead at a time in this process, so its members
        // share one leader.
        let _starting = inner.starting.lock().await;
        if let Some(leader) = inner.leader(group) {
            herald::group::check_member(
                group,
                &herald::group::patterns_text(leader.queue.spec()),
                herald::group::kind_bits(leader.queue.spec()),
                spec,
            )?;
            return Ok(Some(leader));
        }
        // A leader here that is stepping down first writes what the next
        // should know (its handover note).
        inner.handed_over(group).await;
        Lease::prepare(inner, LEASE_TTL).await?;
        let lease = match Lease::take(inner, &inner.names.consumer(group), &inner.member_id).await?
        {
            Taken::Held(lease) => lease,
            Taken::Busy => return Ok(None),
        };
        // A group's start is fixed when it is made: a record says it was.
        let made = match crate::inspect::made_at(inner, group, spec).await {
            Ok(made) => made,
            Err(e) => {
                lease.release(inner).await;
                return Err(e);
            }
        };
        let attempts = handover::read(inner, &inner.names.consumer(group)).await;
        let leader = Arc::new_cyclic(|me: &Weak<Leader>| Leader {
            start: made.unwrap_or(spec.start),
            attempts,
            inner: Arc::downgrade(inner),
            group: group.to_owned(),
            consumer: inner.names.consumer(group),
            queue: Queue::new(spec.clone(), me.clone() as Weak<dyn QueueHost>),
            held: Mutex::new(HashMap::new()),
            lease: Mutex::new(None),
            remotes: Default::default(),
            recent_acks: inner.recent_acks(group),
            stop: tokio::sync::watch::channel(false).0,
        });
        // Leading first: a close from now on steps this leader down, and
        // one that came before refuses its queue here.
        inner.lead(group, &leader);
        if let Err(e) = inner.register(&leader.queue) {
            inner.unlead(group);
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
            crate::inspect::record(inner, group, spec, leader.start).await?;
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
        let serving = (leader.clone(), inner.clone());
        tokio::spawn(async move {
            let (leader, inner) = serving;
            if let Err(e) = crate::remote::serve(leader, inner).await {
                tracing::warn!(error = %e, "a group's leader cannot serve members in other processes");
            }
        });
        Ok(Some(leader))
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

    pub(crate) fn remotes(&self) -> &crate::remote::Remotes {
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
        inner.stepping_down(&self.group, handed.clone());
        inner.unlead(&self.group);
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
        let note: Vec<_> = held
            .iter()
            .filter_map(|((topic, seq), msg)| {
                let next = self.queue.next_attempt(topic, *seq).or_else(|| {
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
        inner.stepped_down(&self.group, &handed);
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

    /// Push what the consumer delivers into the queue until it fails.
    async fn feed(self: Arc<Self>, mut messages: pull::Stream) {
        let spec = self.queue.spec().clone();
        while let Some(msg) = messages.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "a group's consumer failed; re-reading");
                    return;
                }
            };
            let Some(inner) = self.inner() else { return };
            let Ok(info) = msg.info() else { continue };
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
                    continue;
                }
            };
            drop(inner);
            if !spec.wants(env.topic().as_str(), env.kind()) || !self.start.admits(&env) {
                // Not the group's: done with it.
                let _ = msg.ack().await;
                continue;
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
                    continue;
                }
                // Its ack is on the way; should that fail, JetStream
                // delivers it again after the ack wait.
                Some(false) => continue,
                None => {}
            }
            let fresh = {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                held.insert(at, msg).is_none()
            };
            // A redelivery of a message the queue already holds only renews
            // the handle to ack it by.
            if fresh && !self.queue.push(vec![Arc::new(env)]).await {
                return;
            }
        }
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
        let origin = herald::headers::Origin {
            time_ms,
            unique: seq,
            source: codec::PLAIN_SOURCE,
        };
        let Ok(env) = herald::headers::decode(topic.clone(), [], msg.payload.clone(), origin)
        else {
            return;
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((topic, seq), msg.clone());
        let now = chrono::Utc::now();
        self.dead_letter(DeadLetter {
            id: 0,
            envelope: env.with_seq(seq),
            group: Some(self.group.clone()),
            reason: format!("cannot read the message: {}", error.message()),
            code: ErrorCode::Validation,
            first_failed_at: now,
            failed_at: now,
            attempts: 1,
            source: FailureSource::Decode,
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

    fn dead_letter(&self, letter: DeadLetter) {
        let (Some(inner), Some(msg)) = (self.inner(), self.take_held(&letter.envelope)) else {
            return;
        };
        let pending = inner.dead_letter_started();
        tokio::spawn(async move {
            match crate::dead_letters::write(&inner, &letter).await {
                Ok(()) => {
                    if let Err(e) = msg.double_ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "a dead-lettered message was not termed; it may be dead-lettered again");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = %letter.envelope.topic(), "a dead letter was not written; the message goes back to the group");
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
            drop(pending);
        });
    }

    fn acked(
        &self,
        _queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let topic = envelope.topic().clone();
        let Some(msg) = self.take_held(envelope) else {
            // Handed back when the leader stepped down: it comes again.
            return Some(Box::pin(async { Err(herald::group::lease_lost()) }));
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
        Some(Box::pin(async move {
            let acked = msg.double_ack().await;
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
                if let Some(leader) = inner.leader(&self.group) {
                    if Arc::ptr_eq(&leader.queue, &me) {
                        tokio::spawn(async move { leader.step_down().await });
                    }
                }
            }
        }
    }
}

/// Where event `seq` of `topic` stands for `group`: dead-lettered (in the
/// dead letters), in the leader's queue or with a member (when this process
/// leads the group), acked (at or below the consumer's ack floor, or
/// delivered and no longer held), pending (not yet delivered to the
/// group). `NOT_FOUND` for an event the topic does not have and a group
/// that does not follow the topic.
pub(crate) async fn delivery_state(
    inner: &Arc<Inner>,
    topic: &Topic,
    seq: u64,
    group: &str,
) -> Result<DeliveryState> {
    let no_event = || Error::new(ErrorCode::NotFound, format!("`{topic}` has no event {seq}"));
    let Some(stream) = inner.stream(topic).await? else {
        return Err(no_event());
    };
    if seq == 0 || seq > stream.cached_info().state.last_sequence {
        return Err(no_event());
    }
    let consumer = inner.names.consumer(group);
    let info = match stream.consumer_info(&consumer).await {
        Ok(info) => info,
        Err(e) if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound => {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no consumer group {group:?} follows `{topic}`"),
            ))
        }
        Err(e) => {
            return Err(errors::nats(
                ErrorCode::Unavailable,
                "read a group's consumer",
                e,
            ))
        }
    };
    let filter = herald::DeadLetterFilter::default()
        .topic(topic.as_str())?
        .group(group);
    let dead = crate::dead_letters::list(inner, &filter).await?;
    if dead.iter().any(|d| d.envelope.seq() == Some(seq)) {
        return Ok(DeliveryState::DeadLettered);
    }
    let at_leader = match inner.leader(group) {
        Some(leader) => leader.state_of(topic, seq),
        None => crate::remote::state_at_leader(inner, &consumer, topic, seq).await,
    };
    if let Some(state) = at_leader {
        return Ok(state);
    }
    if seq > info.delivered.stream_sequence {
        return Ok(DeliveryState::Pending);
    }
    Ok(DeliveryState::Acked)
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

    use crate::store::Inner;

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

//! Consumer groups on NATS: each process with members of a group reads its
//! share of the group's events straight from JetStream.
//!
//! Owns the [`Leader`] of a group in this process (started by
//! [`Leader::of`], one per process and group, whose queue all the process's
//! members of the group share), the group's *parts*, and which process
//! reads which. JetStream keeps a group's progress in durable consumers on
//! each topic stream it follows, one per part ([`Part`]): eight filtered
//! to the topic's partition subjects (`names`: herald publishes an event on
//! the partition its key hashes to, so a part holds each of its keys whole,
//! in order) and one to the plain subject (where plain clients publish).
//! Explicit acks; a consumer's ack floor is the part's offset, so the group
//! resumes there after any restart.
//!
//! A part is read by one process at a time: the holder of its lease
//! (`leader_lease`: renewed every second, gone 5 s after its holder). Every
//! process with members says so every second (a presence message in the
//! lease stream, aged out like a lease), and the live members, sorted by
//! id, split the parts round-robin: the `i`th of `n` reads the parts `p`
//! with `p mod n = i`. Each process takes the leases of its parts as they
//! come free and gives up the others ([`Leader::step_down_part`]: stop
//! pulling, wait out the pull requests in flight, withdraw what its queue
//! holds of the part, write a handover note, nack what it held, release
//! the lease), so the parts move when members come and go, and a process
//! that dies leaves its parts to the others when its leases and presence
//! age out. No event passes through another process: what JetStream
//! delivers to a part goes into the reader's queue
//! ([`herald::backend::queue::Queue`]: the per-key locks, priority, ack
//! wait, redelivery and dead-lettering of every other transport), and its
//! members take it from there. A key lives in one part, so per-key order
//! holds across processes; a small backlog is shared only by the members
//! of the process whose part holds it.
//!
//! An ack commits the JetStream message (awaited: on the server before
//! `Ok`; acks made together are committed in groups, one confirmation
//! each: [`acker`]); a dead letter is written to the dead-letter stream
//! (by the store, the host of every queue: `dead_letters`), then the
//! original is termed (or, when the write fails, nacked so JetStream
//! redelivers it). The reader keeps the messages it holds alive with
//! progress acks, so JetStream redelivers them only when the reader is
//! gone.
//!
//! A reader records its group's name, patterns and start as it starts
//! (`group_record`), so any process lists the group (`inspect`, which also
//! asks a part's reader where an event stands: `protocol`). A group's start
//! is fixed when it is made (DESIGN.md §4.5): its first reader makes every
//! part's consumers on the streams there then (for `Latest`, after each
//! stream's last event) before it writes the first record, so a later
//! reader takes a stream without a part's consumer for one made after the
//! group, and reads it from the start the record keeps (its beginning, for
//! `Latest`). A group made before parts has one unfiltered consumer per
//! stream, named for the group; the first reader after makes the parts'
//! consumers from where it stands and deletes it ([`migrate`]).

use std::collections::{HashMap, HashSet};
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
use crate::tail::{self, Streams};

/// How long a part's lease, and a member's presence, live without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a reader renews its leases and presence, and looks at who
/// reads which part.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// The durable consumers' ack wait: how long after its reader is gone
/// JetStream redelivers what the reader held.
const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a new reader of a part asks whether what its previous reader
/// held is still pending.
const ORPHAN_POLL: Duration = Duration::from_millis(250);
/// How often the reader tells JetStream it still works on what it holds.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long a pull request lives: a reader that gives up a part reads the
/// one it has out to its end, and waits this long before handing its
/// messages back.
const PULL_EXPIRY: Duration = Duration::from_secs(1);
/// How many of its latest acks a process remembers per group (see
/// `Leader::admit`).
const RECENT_ACKS: usize = 100_000;
/// Most messages a durable consumer has out to its reader unacked.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most messages the reader hands its queue at once.
const FEED_BATCH: usize = 256;
/// How long a process joining a group waits, once it said so, before it
/// takes parts: long enough for members starting together to see each
/// other, short beside a part's move (a pull request's second).
const JOIN_SETTLE: Duration = Duration::from_millis(100);
/// Most messages one pull request asks for.
const PULL_BATCH: usize = 512;

/// One of a group's parts: a partition of its topics, or their plain
/// subjects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Part {
    Partition(u32),
    Plain,
}

impl Part {
    /// The parts of a topic of `partitions` partitions (of a group whose
    /// topics have at most that many).
    pub(crate) fn of_topic(partitions: u32) -> impl Iterator<Item = Part> {
        (0..partitions).map(Part::Partition).chain([Part::Plain])
    }

    /// Whether a topic of `partitions` partitions has this part.
    fn in_topic(self, partitions: u32) -> bool {
        self.partition().is_none_or(|n| n < partitions)
    }

    /// The part of a message on topic subject `subject`.
    fn of_subject(inner: &Inner, subject: &str) -> Part {
        inner
            .names
            .partition_of_subject(subject)
            .map_or(Part::Plain, Part::Partition)
    }

    fn partition(self) -> Option<u32> {
        match self {
            Part::Partition(n) => Some(n),
            Part::Plain => None,
        }
    }

    /// The subject of `topic` this part reads.
    fn filter(self, inner: &Inner, topic: &Topic) -> String {
        match self {
            Part::Partition(n) => inner.names.partition_subject(topic.as_str(), n),
            Part::Plain => inner.names.subject(topic.as_str()),
        }
    }

    /// The part's durable consumers' name (and its lease's) in group
    /// consumer `consumer`.
    pub(crate) fn consumer(self, inner: &Inner, consumer: &str) -> String {
        inner.names.part_consumer(consumer, self.partition())
    }

    /// The part of event `seq` of the topic of stream `stream`, read off
    /// the message's subject.
    pub(crate) async fn of_event(
        inner: &Inner,
        stream: &async_nats::jetstream::stream::Stream,
        seq: u64,
    ) -> Option<Part> {
        let msg = stream.get_raw_message(seq).await.ok()?;
        Some(Part::of_subject(inner, &msg.subject))
    }

    /// The parts the `index`th of `members` live members reads, of a group
    /// whose topics have at most `partitions` partitions: every
    /// `members`th, from the `index`th on.
    fn assigned(index: usize, members: usize, partitions: u32) -> impl Iterator<Item = Part> {
        Part::of_topic(partitions)
            .enumerate()
            .filter(move |(i, _)| i % members.max(1) == index)
            .map(|(_, p)| p)
    }
}

/// What this process keeps of the groups it reads, per store (in
/// `Inner::groups`).
#[derive(Default)]
pub(crate) struct Leading {
    /// The groups this process reads.
    leaders: Mutex<HashMap<String, Arc<Leader>>>,
    /// Groups whose leader here is stepping down, and when it is done.
    stepping_down: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Per group, the events its leaders here acked lately.
    recent_acks: Mutex<HashMap<String, Arc<Mutex<RecentAcks>>>>,
    /// Held while this process starts reading a group.
    starting: tokio::sync::Mutex<()>,
}

/// What `inner`'s process keeps of the groups it reads.
fn leading(inner: &Inner) -> &Leading {
    inner.groups.get()
}

/// This process's leader of `group`, if it reads it.
pub(crate) fn leader(inner: &Inner, group: &str) -> Option<Arc<Leader>> {
    leading(inner).leader(group)
}

/// A member of `spec`'s group in this process, which reads its share of
/// the group from now on (if it did not yet).
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    inner
        .config
        .keyless()
        .check(&spec, inner.config.partition_count(), "NATS")?;
    let group = spec.group.clone().unwrap_or_default();
    loop {
        let leader = Leader::of(inner, &group, &spec).await?;
        let member = leader.member(spec.max_in_flight);
        // Its last member left as this one came: the next leader here
        // starts once it has handed over.
        if !leader.stopped() {
            return Ok(member);
        }
        inner.check_open()?;
    }
}

/// Every leader in this process steps down (the store closes).
pub(crate) async fn step_down_all(inner: &Inner) {
    let leaders: Vec<_> = leading(inner)
        .lock_leaders()
        .drain()
        .map(|(_, l)| l)
        .collect();
    futures_util::future::join_all(leaders.iter().map(|l| l.step_down())).await;
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
    /// when it has handed back what it held and given up its leases.
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
    /// down, is done, so the next leader here reads its handover notes.
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

/// The next wake-up on `wakes`; never, without a subscription.
async fn next_wake(wakes: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match wakes {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// A part's lease while held; `None` once released or lost.
type HeldLease = Arc<tokio::sync::Mutex<Option<Lease>>>;

/// A leader stepping down, between [`Leader::begin_step_down`] and
/// [`Leader::finish_step_down`].
struct SteppingDown {
    inner: Arc<Inner>,
    done: watch::Sender<bool>,
    handed: watch::Receiver<bool>,
}

/// A topic stream the group follows.
#[derive(Clone)]
struct Followed {
    stream: String,
    topic: Topic,
    partitions: u32,
    /// Where a part's consumer made on it now starts.
    start: DeliverPolicy,
}

/// The parts a leader reads and the streams it reads them on.
#[derive(Default)]
struct Parts {
    streams: Vec<Followed>,
    /// The parts read, each with the switch that stops its pulls.
    reading: HashMap<Part, watch::Sender<bool>>,
    /// Parts being given up (not read, not to be taken again yet).
    leaving: HashSet<Part>,
}

/// One group's reader in this process: the queue its members here share,
/// fed by the parts it holds.
pub(crate) struct Leader {
    inner: Weak<Inner>,
    group: String,
    /// Where the group started when it was made (its record keeps it).
    start: StartPosition,
    /// The group consumer's name (its parts' names start with it).
    consumer: String,
    queue: Arc<Queue>,
    /// The JetStream messages behind the events the queue holds, by topic
    /// and seq.
    held: Mutex<HashMap<(Topic, u64), async_nats::jetstream::Message>>,
    /// From the handover notes of the parts' previous readers: the attempt
    /// each event they held would have been delivered as next.
    attempts: Mutex<HashMap<(String, u64), u32>>,
    /// The events this process's leaders of the group acked lately: a
    /// server that crashed before writing an ack redelivers the event after
    /// its restart, and the leader acks it again instead of delivering it.
    recent_acks: Arc<Mutex<RecentAcks>>,
    parts: Mutex<Parts>,
    /// The leases of the parts read, each behind a lock of its own: a
    /// renewal in flight and the release at the end of a step-down take
    /// turns, so neither loses the lease to the other.
    leases: Mutex<HashMap<Part, HeldLease>>,
    /// Set when the leader stops: its tasks end.
    stop: tokio::sync::watch::Sender<bool>,
    /// The store's dead-letter writes (the queue counts its own in them).
    dead_letter_writes: DeadLetterWrites,
    /// Where acks go to be committed in groups ([`acker`]).
    acks: mpsc::UnboundedSender<PendingAck>,
}

impl Leader {
    /// This process's leader of `group`, started now if it has none: it
    /// makes the group if nobody did, says this process is a member, and
    /// takes its share of the parts.
    pub(crate) async fn of(
        inner: &Arc<Inner>,
        group: &str,
        spec: &SubscribeSpec,
    ) -> Result<Arc<Leader>> {
        let leading = leading(inner);
        // One start at a time in this process, so its members share one
        // leader.
        let _starting = leading.starting.lock().await;
        if let Some(leader) = leading.leader(group) {
            herald::backend::group::check_member(
                group,
                &herald::backend::group::patterns_text(leader.queue.spec()),
                herald::backend::group::kind_bits(leader.queue.spec()),
                spec,
            )?;
            return Ok(leader);
        }
        // A leader here that is stepping down first writes what the next
        // should know (its handover notes).
        leading.handed_over(group).await;
        Lease::prepare(inner, LEASE_TTL).await?;
        // A group's start is fixed when it is made: a record says it was.
        let made = crate::group_record::made_at(inner, group, spec).await?;
        let (acks, to_commit) = Gather::channel(ACKS_IN_FLIGHT, ACK_BATCH);
        tokio::spawn(acker(to_commit));
        let leader = Arc::new_cyclic(|me: &Weak<Leader>| Leader {
            acks,
            start: made.unwrap_or(spec.start),
            attempts: Mutex::new(HashMap::new()),
            inner: Arc::downgrade(inner),
            group: group.to_owned(),
            consumer: inner.names.consumer(group),
            queue: Queue::new(spec.clone(), me.clone() as Weak<dyn QueueHost>),
            held: Mutex::new(HashMap::new()),
            parts: Mutex::new(Parts::default()),
            leases: Mutex::new(HashMap::new()),
            recent_acks: leading.recent_acks(group),
            stop: tokio::sync::watch::channel(false).0,
            dead_letter_writes: inner.dead_letter_writes.clone(),
        });
        // Leading first: a close from now on steps this leader down, and
        // one that came before refuses its queue here.
        leading.lead(group, &leader);
        if let Err(e) = inner.register(&leader.queue) {
            leading.unlead(group);
            return Err(e);
        }
        let followed = async {
            let streams = Streams::follow(inner, spec).await?;
            let followed: Vec<Followed> = streams
                .existing
                .iter()
                .map(|found| {
                    let start = match leader.start {
                        // Made now: it starts after what each stream holds.
                        StartPosition::Latest if made.is_none() => DeliverPolicy::ByStartSequence {
                            start_sequence: found.last_seq + 1,
                        },
                        // Made before: a stream without the group's
                        // consumers came after it, and is read from its
                        // start (a consumer made before resumes as it is).
                        start => tail::policy(&start),
                    };
                    Followed {
                        stream: found.name.clone(),
                        topic: found.topic.clone(),
                        partitions: found.partitions,
                        start,
                    }
                })
                .collect();
            if made.is_none() {
                // The consumers fix where the group starts on the streams
                // there now; they exist before the record says the group
                // does, so a later reader takes a stream without them for
                // a stream made after the group.
                leader.make_consumers(inner, &followed).await?;
            } else {
                migrate(inner, group, &leader.consumer, &followed).await?;
            }
            crate::group_record::record(inner, group, spec, leader.start).await?;
            Ok::<_, herald::Error>((streams.created, followed))
        };
        let (created, followed) = match followed.await {
            Ok(s) => s,
            Err(e) => {
                leader.step_down().await;
                return Err(e);
            }
        };
        leader.lock_parts().streams = followed;
        tokio::spawn(leader.clone().follow_new(created));
        tokio::spawn(leader.clone().balance());
        tokio::spawn(leader.clone().keep_progress());
        Ok(leader)
    }

    /// A new member of the leader's queue, holding at most
    /// `max_in_flight` deliveries at once.
    pub(crate) fn member(&self, max_in_flight: usize) -> Subscription {
        self.queue.join();
        queue::member(self.queue.clone(), max_in_flight)
    }

    pub(crate) fn inner(&self) -> Option<Arc<Inner>> {
        self.inner.upgrade()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn lock_parts(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_leases(&self) -> MutexGuard<'_, HashMap<Part, HeldLease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop reading the group: close the queue, give up every part (its
    /// messages handed back with a nack, so JetStream redelivers them to
    /// the next reader at once) and the presence.
    pub(crate) async fn step_down(&self) {
        if let Some(begun) = self.begin_step_down() {
            self.finish_step_down(begun).await;
        }
    }

    /// The part of stepping down that cannot wait: from its return this
    /// leader is stopped, its queue closed and no longer this process's,
    /// so a member opened now starts another. `None` when it stopped
    /// before.
    fn begin_step_down(&self) -> Option<SteppingDown> {
        if self.stop.send_replace(true) {
            return None;
        }
        self.queue.close();
        let inner = self.inner()?;
        let (done, handed) = tokio::sync::watch::channel(false);
        let leading = leading(&inner);
        leading.stepping_down(&self.group, handed.clone());
        leading.unlead(&self.group);
        Some(SteppingDown {
            inner,
            done,
            handed,
        })
    }

    /// Give up the presence and every part.
    async fn finish_step_down(&self, begun: SteppingDown) {
        let SteppingDown {
            inner,
            done,
            handed,
        } = begun;
        self.leave_presence(&inner).await;
        self.wake(&inner).await;
        let reading: Vec<Part> = self.lock_parts().reading.keys().copied().collect();
        futures_util::future::join_all(reading.into_iter().map(|p| self.step_down_part(p))).await;
        let _ = done.send(true);
        leading(&inner).stepped_down(&self.group, &handed);
    }

    /// Give up `part`: stop its pulls, wait out the pull requests still
    /// out, withdraw from the queue what waits of it, write the handover
    /// note, nack what was held of it, release its lease.
    async fn step_down_part(&self, part: Part) {
        {
            let mut parts = self.lock_parts();
            let Some(stop) = parts.reading.remove(&part) else {
                return;
            };
            let _ = stop.send(true);
            parts.leaving.insert(part);
        }
        let Some(inner) = self.inner() else { return };
        // Messages handed back now would go to the pull requests still out.
        tokio::time::sleep(PULL_EXPIRY + Duration::from_millis(100)).await;
        let held: Vec<_> = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let of_part: Vec<(Topic, u64)> = held
                .iter()
                .filter(|(_, msg)| Part::of_subject(&inner, &msg.subject) == part)
                .map(|(at, _)| at.clone())
                .collect();
            of_part
                .into_iter()
                .filter_map(|at| held.remove_entry(&at))
                .collect()
        };
        let ats: HashSet<&(Topic, u64)> = held.iter().map(|(at, _)| at).collect();
        self.queue.withdraw(|env| {
            env.seq()
                .is_some_and(|s| ats.contains(&(env.topic().clone(), s)))
        });
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
        handover::write(&inner, &part.consumer(&inner, &self.consumer), note).await;
        // JetStream redelivers a consumer's nacked messages before new
        // ones, in the order nacked: by seq, each key's in order.
        let mut held = held;
        held.sort_by_key(|((_, seq), _)| *seq);
        for (_, msg) in held {
            // A nack that is lost only delays the redelivery to the ack wait.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        let held_lease = self.lock_leases().remove(&part);
        if let Some(held_lease) = held_lease {
            // After a renewal under way; none follows (it is no longer in
            // the map).
            let lease = held_lease.lock().await.take();
            if let Some(lease) = lease {
                lease.release(&inner).await;
                self.wake(&inner).await;
            }
        }
        self.lock_parts().leaving.remove(&part);
    }

    /// Every second: say this process is a member, renew the leases held
    /// (a part whose lease was lost is given up), and take or give up parts
    /// so this process reads its share of them.
    async fn balance(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(RENEW_EVERY);
        let mut failing = false;
        let mut joined = false;
        let mut wakes = match self.inner() {
            Some(inner) => inner
                .client
                .subscribe(crate::protocol::wake_subject(&inner, &self.consumer))
                .await
                .ok(),
            None => return,
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(_) = next_wake(&mut wakes) => {}
                _ = stop.changed() => return,
            }
            let Some(inner) = self.inner() else { return };
            let members = match self.presence(&inner).await {
                Ok(members) => {
                    failing = false;
                    if !joined {
                        // The others make room now, not at their next look;
                        // members starting together see each other before
                        // any takes a part it would hand on at once.
                        joined = true;
                        self.wake(&inner).await;
                        tokio::select! {
                            _ = tokio::time::sleep(JOIN_SETTLE) => {}
                            _ = stop.changed() => return,
                        }
                        match self.presence(&inner).await {
                            Ok(members) => members,
                            Err(_) => continue,
                        }
                    } else {
                        members
                    }
                }
                Err(e) => {
                    // Nothing flows while the server is away; read on.
                    if !failing {
                        tracing::warn!(group = self.group, error = %e, "cannot say this process is a member; reading on");
                    }
                    failing = true;
                    continue;
                }
            };
            self.renew(&inner).await;
            if self.stopped() {
                return;
            }
            let index = members
                .iter()
                .position(|m| *m == inner.member_id)
                .unwrap_or(0);
            let (reading, leaving, partitions) = {
                let parts = self.lock_parts();
                let partitions = parts.streams.iter().map(|f| f.partitions).max();
                (
                    parts.reading.keys().copied().collect::<Vec<Part>>(),
                    parts.leaving.clone(),
                    // Before its topics have streams: as many as one
                    // made now gets.
                    partitions.unwrap_or_else(|| inner.config.partition_count()),
                )
            };
            let mine: HashSet<Part> = Part::assigned(index, members.len(), partitions).collect();
            for part in reading.iter().filter(|p| !mine.contains(p)) {
                let (me, part) = (self.clone(), *part);
                tokio::spawn(async move { me.step_down_part(part).await });
            }
            for part in mine {
                if reading.contains(&part) || leaving.contains(&part) {
                    continue;
                }
                let name = part.consumer(&inner, &self.consumer);
                match Lease::take(&inner, &name, &inner.member_id).await {
                    Ok(Taken::Held(lease)) => self.take_part(&inner, part, lease).await,
                    // Its reader gives it up on its next look.
                    Ok(Taken::Busy) => {}
                    Err(e) => {
                        tracing::warn!(group = self.group, error = %e, "cannot take a part's lease");
                    }
                }
            }
        }
    }

    /// Renew the leases held; give up the parts whose lease was lost.
    async fn renew(self: &Arc<Self>, inner: &Inner) {
        let held: Vec<(Part, HeldLease)> = self
            .lock_leases()
            .iter()
            .map(|(part, lease)| (*part, lease.clone()))
            .collect();
        for (part, held_lease) in held {
            let mut slot = held_lease.lock().await;
            // Released by a step-down meanwhile.
            let Some(lease) = slot.as_mut() else { continue };
            match lease.renew(inner).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        group = self.group,
                        part = ?part,
                        "lost a part's lease; giving it up"
                    );
                    // Not ours to release.
                    slot.take();
                    let me = self.clone();
                    tokio::spawn(async move { me.step_down_part(part).await });
                }
                // Renewed on the next tick, or aged out and lost then.
                Err(_) => {}
            }
        }
    }

    /// Say this process is a member of the group, and list the live
    /// members' ids, sorted.
    async fn presence(&self, inner: &Inner) -> std::result::Result<Vec<String>, async_nats::Error> {
        let subject = inner.names.member_subject(&self.consumer, &inner.member_id);
        inner
            .js
            .publish(subject, bytes::Bytes::new())
            .await?
            .await?;
        let stream = inner
            .js
            .get_stream_no_info(inner.names.leases_stream())
            .await?;
        let mut subjects = stream
            .info_with_subjects(inner.names.member_subjects(&self.consumer))
            .await?;
        let mut members = Vec::new();
        while let Some((subject, _)) = futures_util::TryStreamExt::try_next(&mut subjects).await? {
            if let Some((_, member)) = subject.rsplit_once('.') {
                members.push(member.to_owned());
            }
        }
        members.sort();
        Ok(members)
    }

    /// Wake the group's other processes: the split changed.
    async fn wake(&self, inner: &Inner) {
        let subject = crate::protocol::wake_subject(inner, &self.consumer);
        // One lost leaves them to their next look.
        let _ = inner.client.publish(subject, bytes::Bytes::new()).await;
    }

    /// Take this process's presence back (it leaves the group).
    async fn leave_presence(&self, inner: &Inner) {
        let Ok(stream) = inner
            .js
            .get_stream_no_info(inner.names.leases_stream())
            .await
        else {
            return;
        };
        // One that stays ages out.
        let _ = stream
            .purge()
            .filter(inner.names.member_subject(&self.consumer, &inner.member_id))
            .await;
    }

    /// Read `part` (its lease just taken): learn the attempts its last
    /// reader noted, serve where its events stand, pull its consumers.
    async fn take_part(self: &Arc<Self>, inner: &Arc<Inner>, part: Part, lease: Lease) {
        let name = part.consumer(inner, &self.consumer);
        let noted = handover::read(inner, &name).await;
        // A note is its writer's planned step-down, which handed back what
        // it held; none means a reader that died may have left messages
        // pending. The note is cleared once read, so an old one never
        // vouches for a reader that dies later.
        let orphans = noted.is_empty();
        if !orphans {
            handover::write(inner, &name, Vec::new()).await;
        }
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(noted);
        let states = inner
            .client
            .subscribe(crate::protocol::state_subject(inner, &name))
            .await;
        let mut parts = self.lock_parts();
        if self.stopped() {
            drop(parts);
            let inner = inner.clone();
            tokio::spawn(async move { lease.release(&inner).await });
            return;
        }
        let (stop, _) = watch::channel(false);
        for followed in parts.streams.iter().filter(|f| part.in_topic(f.partitions)) {
            tokio::spawn(
                self.clone()
                    .pull(followed.clone(), part, stop.subscribe(), orphans),
            );
        }
        match states {
            Ok(states) => {
                tokio::spawn(self.clone().serve_states(states, stop.subscribe()));
            }
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "cannot serve where a part's events stand");
            }
        }
        parts.reading.insert(part, stop);
        self.lock_leases()
            .insert(part, Arc::new(tokio::sync::Mutex::new(Some(lease))));
    }

    /// Answer where events of a part stand until it is given up.
    async fn serve_states(
        self: Arc<Self>,
        mut states: async_nats::Subscriber,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let msg = tokio::select! {
                m = states.next() => m,
                _ = stop.changed() => return,
            };
            let Some(msg) = msg else { return };
            let Some(inner) = self.inner() else { return };
            crate::protocol::answer_state(&inner, &msg, |topic, seq| self.state_of(topic, seq))
                .await;
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

    /// Read the parts held on topic streams made from now on.
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
            let Some((topic, partitions)) =
                tail::followed_topic(&inner, self.queue.spec(), &advisory.stream).await
            else {
                continue;
            };
            let followed = Followed {
                stream: advisory.stream,
                topic,
                partitions,
                start: tail::policy(&self.start),
            };
            let mut parts = self.lock_parts();
            if parts.streams.iter().any(|f| f.stream == followed.stream) {
                continue;
            }
            for (part, stop) in &parts.reading {
                if part.in_topic(followed.partitions) {
                    // A stream made now has nothing a reader held.
                    tokio::spawn(self.clone().pull(
                        followed.clone(),
                        *part,
                        stop.subscribe(),
                        false,
                    ));
                }
            }
            parts.streams.push(followed);
        }
    }

    /// Feed the queue from `part`'s durable consumer on `followed` (made
    /// if new) in pull requests of up to [`PULL_BATCH`] messages, each
    /// living [`PULL_EXPIRY`], one after another, again after every
    /// failure, until the part is given up. Then no request follows, and
    /// what the one out still brings is held, not queued, until it ends, so
    /// the part's step-down hands it back with the rest. (A stream of
    /// requests sent ahead would leave one open: what it took after the
    /// reader stopped would come again only after the ack wait, behind
    /// later events of its keys, and on 2.9.10 a nack taken by it even made
    /// an acked message come again.)
    async fn pull(
        self: Arc<Self>,
        followed: Followed,
        part: Part,
        mut gone: watch::Receiver<bool>,
        mut orphans: bool,
    ) {
        let mut retry = Duration::from_millis(50);
        let mut consumer = None;
        while !*gone.borrow() {
            let Some(inner) = self.inner() else { return };
            let batch = match &consumer {
                Some(c) => self.request(c, &followed).await,
                None => durable_consumer(
                    &inner,
                    &self.group,
                    &self.consumer,
                    &followed,
                    part,
                    followed.start,
                )
                .await
                .map(|c| {
                    consumer = Some(c);
                    None
                }),
            };
            drop(inner);
            let mut batch = match batch {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    if let Some(c) = consumer.as_ref().filter(|_| orphans) {
                        orphans = false;
                        tokio::select! {
                            () = self.await_orphans(c, &followed) => {}
                            _ = gone.changed() => return,
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(group = self.group, stream = followed.stream, error = %e, "cannot read a group's consumer; retrying");
                    consumer = None;
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = gone.changed() => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            retry = Duration::from_millis(50);
            tokio::select! {
                open = self.feed(&mut batch) => if !open { return },
                _ = gone.changed() => {
                    let rest = async {
                        while let Some(msg) = batch.next().await {
                            if let Ok(msg) = msg {
                                self.admit(msg).await;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(PULL_EXPIRY, rest).await;
                    return;
                }
            }
        }
    }

    /// Before the first pull on a part taken without a handover note:
    /// when JetStream still counts messages of its consumer as pending
    /// (handed to a reader that died holding them), wait until they are
    /// acked or their ack wait has run out, so JetStream redelivers them
    /// ahead of the part's later events. Pulling at once handed a key's
    /// later events out while its earlier ones waited out the dead
    /// reader's ack wait (`herald chaos` on NATS). A planned step-down
    /// nacks what it held (JetStream still counts those pending, but
    /// redelivers them first) and leaves a note, so it waits for nothing.
    async fn await_orphans(
        &self,
        consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
        followed: &Followed,
    ) {
        let deadline = tokio::time::Instant::now() + CONSUMER_ACK_WAIT;
        loop {
            match consumer.get_info().await {
                Ok(info) if info.num_ack_pending == 0 => return,
                Ok(info) => tracing::debug!(
                    group = self.group,
                    stream = followed.stream,
                    pending = info.num_ack_pending,
                    "a part's previous reader left messages pending; waiting for their redelivery"
                ),
                Err(e) => {
                    tracing::debug!(group = self.group, error = %e, "cannot read a part's consumer");
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(ORPHAN_POLL).await;
        }
    }

    /// One pull request on `consumer`.
    async fn request(
        &self,
        consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
        followed: &Followed,
    ) -> Result<Option<pull::Batch>> {
        consumer
            .batch()
            .max_messages(PULL_BATCH)
            .expires(PULL_EXPIRY)
            .messages()
            .await
            .map(Some)
            .map_err(|e| unavailable(&self.group, &followed.stream, &e))
    }

    /// Make every part's durable consumer on `followed` that does not
    /// exist yet, a few at a time.
    async fn make_consumers(&self, inner: &Inner, followed: &[Followed]) -> Result<()> {
        let all: Vec<(&Followed, Part)> = followed
            .iter()
            .flat_map(|f| Part::of_topic(f.partitions).map(move |p| (f, p)))
            .collect();
        for some in all.chunks(16) {
            let making = some.iter().map(|(f, part)| {
                durable_consumer(inner, &self.group, &self.consumer, f, *part, f.start)
            });
            futures_util::future::try_join_all(making).await?;
        }
        Ok(())
    }

    /// Push what a pull request brings into the queue until it ends: the
    /// messages received by the time the queue is offered the first go
    /// with it, up to [`FEED_BATCH`] (one wake-up of the members, not one
    /// per message). False once the queue is closed.
    async fn feed(&self, batch: &mut pull::Batch) -> bool {
        while let Some(first) = batch.next().await {
            let mut received = vec![first];
            while received.len() < FEED_BATCH {
                match batch.next().now_or_never() {
                    Some(Some(next)) => received.push(next),
                    _ => break,
                }
            }
            let mut events = Vec::with_capacity(received.len());
            for msg in received {
                match msg {
                    Ok(msg) => {
                        if let Some(env) = self.admit(msg).await {
                            events.push(env);
                        }
                    }
                    // The request ends; the next one reads on.
                    Err(e) => {
                        tracing::debug!(group = self.group, error = %e, "a pull request failed");
                    }
                }
            }
            if !events.is_empty() && !self.queue.push(events).await {
                return false;
            }
        }
        true
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
            .and_then(|t| {
                self.attempts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(t.as_str().to_owned(), seq))
                    .copied()
            })
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
fn unavailable(group: &str, stream: &str, e: &dyn std::fmt::Display) -> Error {
    errors::nats(
        ErrorCode::Unavailable,
        &format!("open group {group:?} on stream {stream}"),
        e,
    )
}

/// `part`'s durable consumer of group consumer `consumer` on `followed`,
/// made with `start` if new.
async fn durable_consumer(
    inner: &Inner,
    group: &str,
    consumer: &str,
    followed: &Followed,
    part: Part,
    start: DeliverPolicy,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>> {
    let unavailable = |e: &dyn std::fmt::Display| unavailable(group, &followed.stream, e);
    let s = inner
        .js
        .get_stream_no_info(&followed.stream)
        .await
        .map_err(|e| unavailable(&e))?;
    let name = part.consumer(inner, consumer);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("herald consumer group {group:?}")),
        deliver_policy: start,
        filter_subject: part.filter(inner, &followed.topic),
        ack_policy: AckPolicy::Explicit,
        ack_wait: CONSUMER_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    match s.get_or_create_consumer(&name, config).await {
        Ok(c) => Ok(c),
        // Made by another process between the look and the make.
        Err(_) => s.get_consumer(&name).await.map_err(|e| unavailable(&e)),
    }
}

/// Make the parts' consumers of a group made before parts from where its
/// one consumer per stream (named for the group, unfiltered) stands, then
/// delete that consumer. Whatever it delivered beyond its ack floor comes
/// again (at least once), except what this process acked lately.
async fn migrate(inner: &Inner, group: &str, consumer: &str, followed: &[Followed]) -> Result<()> {
    for f in followed {
        let Ok(s) = inner.js.get_stream_no_info(&f.stream).await else {
            continue;
        };
        let Ok(old) = s.consumer_info(consumer).await else {
            continue;
        };
        let start = match old.ack_floor.stream_sequence {
            0 => old.config.deliver_policy,
            floor => DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
        };
        for part in Part::of_topic(f.partitions) {
            durable_consumer(inner, group, consumer, f, part, start).await?;
        }
        // Another process's migration may have deleted it first.
        let _ = s.delete_consumer(consumer).await;
        tracing::info!(
            consumer,
            stream = f.stream,
            "a group's consumer became its parts' consumers"
        );
    }
    Ok(())
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
                        if let Some(begun) = leader.begin_step_down() {
                            tokio::spawn(async move { leader.finish_step_down(begun).await });
                        }
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

//! The in-memory transport: the in-process bus's backend.
//!
//! Owns [`MemoryTransport`] and [`MemoryConfig`]. Events live only as long as
//! the process; everything else of DESIGN.md §4 holds:
//!
//! - **Sequencing.** Each topic has its own lock and counter (no global lock on
//!   the publish path); `seq` starts at 1, has no gaps, is assigned under the
//!   topic lock, and is pushed to every subscriber queue under that same lock,
//!   so subscribers see it in order. Overflow is an `INTERNAL` error, never a
//!   wrap. A batch is appended atomically: all its topics are locked (in name
//!   order) before anything is assigned.
//! - **Capacity and overflow.** Every subscription (or consumer group) has a
//!   queue of `buffer` undelivered events. A publisher first reserves room in
//!   every queue its topic feeds; when a queue is full it waits for room up to
//!   [`MemoryConfig::publish_timeout`] and then fails with `BACKPRESSURE`
//!   having appended nothing. Nothing is dropped, and since reserving room
//!   happens before the topic lock is taken, a full queue only slows the
//!   publishers of the topics that queue follows.
//! - **History.** The last [`MemoryConfig::history_size`] events of each topic
//!   are retained, so a subscription can start at `Earliest`, a `seq` or a time
//!   within that window. A start at `Earliest` or a `seq` before it begins at
//!   the oldest event kept, with a warning that says how many it skipped and
//!   the `herald_start_skipped_total` counter.
//! - **Groups.** Members of a group pull from one shared queue. An event with a
//!   `key` locks its (topic, key) flow until it is settled, so the next event
//!   of that key goes to whichever member is free, only after the previous one
//!   is done: one member at a time, in order. Keyless events are shared freely.
//!   A group lives while it has members.
//! - **Priority.** A queue holds one FIFO per (topic, key); the next delivery is
//!   the head with the highest priority (then the oldest). Events of one topic
//!   and key are never reordered.
//! - **Redelivery.** A nack, a dropped delivery, or a delivery left unsettled
//!   past the subscription's `ack_wait` puts the event back at the head of its
//!   flow with `attempt + 1` (after the nack's delay; a late settle of the
//!   superseded delivery is ignored); at
//!   `max_deliver` attempts, or on `term`, it is dead-lettered. An event past
//!   its `expires_at` is dead-lettered as `expired` instead of delivered.
//! - **Dedupe.** Each topic remembers the idempotency keys of the last
//!   `dedupe_window` (bounded to `dedupe_capacity` keys per topic).
//!
//! Not here: persistence (see the durable transports).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::TryAcquireError;
use uuid::Uuid;

use crate::backend::subscription::{StartPosition, SubscribeSpec, Subscription};
use crate::backend::transport::{
    DeliveryState, Features, GroupInfo, GroupTopic, Inspect, TopicInfo, Transport,
};
use crate::config::{env_parse, in_range, DeliveryConfig};
use crate::model::dead_letter::{DeadLetter, DeadLetterFilter};
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::topic::Topic;
use crate::observe::instrument::START_SKIPPED;
use crate::observe::metrics::Metrics;

use crate::backend::dead_lettering::{DeadLetterWrites, Discards, DEAD_LETTER_WRITE_WAIT};
use crate::backend::dedupe::{DedupeStore, MemoryDedupe};
use crate::backend::queue::{self, Queue, QueueHost};
use crate::backend::schemas::{MemorySchemas, SchemaStore};
use crate::model::delivery::BoxFuture;

/// Events each topic retains (`HERALD_HISTORY_SIZE`).
pub const DEFAULT_HISTORY_SIZE: usize = 1000;
pub use crate::config::DEFAULT_MAX_DELIVER;
/// Most idempotency keys remembered per topic.
pub const DEFAULT_DEDUPE_CAPACITY: usize = 100_000;
/// Most dead letters kept; past it the oldest are dropped and counted.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 100_000;

/// Settings of the in-memory transport.
///
/// ```
/// use std::time::Duration;
/// use herald::memory::{MemoryConfig, MemoryTransport};
/// let t = MemoryTransport::new(
///     MemoryConfig::default().history_size(10_000).publish_timeout(Duration::from_secs(1)),
/// ).unwrap();
/// # drop(t);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    history_size: usize,
    delivery: DeliveryConfig,
    dedupe_capacity: usize,
    dead_letter_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            history_size: DEFAULT_HISTORY_SIZE,
            delivery: DeliveryConfig::default(),
            dedupe_capacity: DEFAULT_DEDUPE_CAPACITY,
            dead_letter_capacity: DEFAULT_DEAD_LETTER_CAPACITY,
        }
    }
}

impl MemoryConfig {
    /// Defaults overridden by `HERALD_HISTORY_SIZE` and the delivery
    /// settings ([`DeliveryConfig::from_env`]: the publish timeout, attempts
    /// before dead-lettering, the dedupe window) when set, validated.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(DeliveryConfig::from_env()?)
    }

    /// As [`from_env`](Self::from_env), with the delivery settings already
    /// read.
    pub fn from_env_with(delivery: DeliveryConfig) -> Result<Self> {
        let mut c = MemoryConfig {
            delivery,
            ..MemoryConfig::default()
        };
        if let Some(v) = env_parse("HERALD_HISTORY_SIZE")? {
            c.history_size = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Check every value against its allowed range.
    pub fn validate(&self) -> Result<()> {
        in_range("HERALD_HISTORY_SIZE", self.history_size, 0, 1_000_000)?;
        self.delivery.validate()?;
        self.delivery.windowed_dedupe("the memory store")?;
        in_range("dedupe_capacity", self.dedupe_capacity, 0, 100_000_000)?;
        in_range(
            "dead_letter_capacity",
            self.dead_letter_capacity,
            1,
            100_000_000,
        )?;
        Ok(())
    }

    /// Events retained per topic for late subscribers, 0–1,000,000
    /// (default 1,000): a subscription starting at
    /// [`Earliest`](StartPosition::Earliest) gets the last this many. It
    /// logs a warning with the count of the older events it skipped, and
    /// adds them to [`START_SKIPPED`](crate::instrument::START_SKIPPED).
    pub fn history_size(mut self, n: usize) -> Self {
        self.history_size = n;
        self
    }
    /// The delivery settings, all at once (replacing those set so far).
    pub fn delivery(mut self, delivery: DeliveryConfig) -> Self {
        self.delivery = delivery;
        self
    }
    /// How long a publish waits for room in a full subscriber queue before it
    /// fails with `BACKPRESSURE` (the delivery settings' timeout).
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.delivery = self.delivery.timeout(d);
        self
    }
    /// How long an idempotency key is remembered, 0 (off) – 7 days.
    pub fn dedupe_window(mut self, d: Duration) -> Self {
        self.delivery = self.delivery.dedupe_window(d);
        self
    }
    /// Most idempotency keys remembered per topic (the oldest go first).
    pub fn dedupe_capacity(mut self, n: usize) -> Self {
        self.dedupe_capacity = n;
        self
    }
    /// Most dead letters kept.
    pub fn dead_letter_capacity(mut self, n: usize) -> Self {
        self.dead_letter_capacity = n;
        self
    }
}

/// The in-process transport. Cheap to clone; clones share state.
///
/// ```
/// use herald::{Bus, memory::MemoryTransport};
/// let bus = Bus::builder().transport(MemoryTransport::default()).build().unwrap();
/// # drop(bus);
/// ```
#[derive(Clone)]
pub struct MemoryTransport {
    shared: Arc<Shared>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        MemoryTransport::with_config(MemoryConfig::default())
    }
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl MemoryTransport {
    /// A transport with `config`, validated.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(MemoryTransport::with_config(config))
    }

    fn with_config(config: MemoryConfig) -> Self {
        MemoryTransport {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                topics: RwLock::new(HashMap::new()),
                dead: Mutex::new(DeadStore::default()),
                dead_letter_writes: DeadLetterWrites::default(),
                closed: AtomicBool::new(false),
                metrics: std::sync::OnceLock::new(),
                discards: Discards::new(config.delivery.dead_letter_destination()),
                schemas: Arc::default(),
                config,
            }),
        }
    }

    /// Dead letters dropped because the store was full.
    pub fn dead_letters_dropped(&self) -> u64 {
        self.shared.dead.lock().dropped
    }
}

pub(crate) struct Shared {
    config: MemoryConfig,
    registry: Mutex<Registry>,
    topics: RwLock<HashMap<Topic, Arc<TopicState>>>,
    dead: Mutex<DeadStore>,
    dead_letter_writes: DeadLetterWrites,
    closed: AtomicBool,
    /// The registry of the first instrumented bus built on this store,
    /// where starts past the history count what they skipped.
    metrics: std::sync::OnceLock<Metrics>,
    /// Whether dead letters are kept (any `HERALD_DEAD_LETTERS` name keeps
    /// them in this store's list) or discarded (`off`).
    discards: Discards,
    /// Its schema subjects.
    schemas: Arc<MemorySchemas>,
}

#[derive(Default)]
struct Registry {
    queues: Vec<Arc<Queue>>,
    groups: HashMap<String, Arc<Queue>>,
}

#[derive(Default)]
struct DeadStore {
    entries: VecDeque<DeadLetter>,
    dropped: u64,
    next_id: u64,
}

struct TopicState {
    name: Topic,
    inner: Mutex<TopicInner>,
}

struct TopicInner {
    last_seq: u64,
    history: VecDeque<Arc<Envelope>>,
    subs: Arc<[Arc<Queue>]>,
    version: u64,
    dedupe: Dedupe,
}

#[derive(Hash, PartialEq, Eq, Clone)]
enum DedupeKey {
    Id(Uuid),
    Key(Box<str>),
}

impl DedupeKey {
    fn of(env: &Envelope) -> Self {
        match env.explicit_idempotency_key() {
            Some(k) => DedupeKey::Key(k.into()),
            None => DedupeKey::Id(env.id()),
        }
    }
}

#[derive(Default)]
struct Dedupe {
    seen: HashMap<DedupeKey, u64, foldhash::quality::RandomState>,
    order: VecDeque<(Instant, DedupeKey)>,
}

impl Dedupe {
    fn prune(&mut self, now: Instant, window: Duration, capacity: usize) {
        while let Some((at, key)) = self.order.front() {
            if now.duration_since(*at) < window && self.order.len() <= capacity {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
    }
}

impl QueueHost for Shared {
    fn max_deliver(&self) -> u32 {
        self.config.delivery.max_deliver_attempts()
    }

    fn leave(&self, queue: &Arc<Queue>) {
        let mut registry = self.registry.lock();
        if queue.leave() {
            self.detach(&mut registry, queue);
        }
    }

    fn dead_letter(&self, mut letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        if self.discards.discard(&letter) {
            return Box::pin(std::future::ready(Ok(())));
        }
        let mut dead = self.dead.lock();
        if dead.entries.len() >= self.config.dead_letter_capacity {
            dead.entries.pop_front();
            dead.dropped += 1;
        }
        dead.next_id += 1;
        letter.id = dead.next_id;
        dead.entries.push_back(letter);
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }
}

impl Shared {
    /// Wait for the dead letters being given up on to be written.
    async fn written(&self) {
        self.dead_letter_writes
            .settled(DEAD_LETTER_WRITE_WAIT)
            .await;
    }

    fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        let Some(queue) = self.registry.lock().groups.get(group).cloned() else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no consumer group {group:?}"),
            ));
        };
        let last = self
            .topics
            .read()
            .get(topic.as_str())
            .map(|t| t.inner.lock().last_seq);
        if seq == 0 || last.is_none_or(|l| seq > l) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("`{topic}` has no event {seq}"),
            ));
        }
        if let Some(state) = queue.state_of(topic, seq) {
            return Ok(state);
        }
        let dead = self.dead.lock();
        let is_dead = dead.entries.iter().any(|d| {
            d.group.as_deref() == Some(group)
                && d.envelope.topic() == topic
                && d.envelope.seq() == Some(seq)
        });
        Ok(if is_dead {
            DeliveryState::DeadLettered
        } else {
            DeliveryState::Acked
        })
    }

    /// Each group with its standing on every topic it follows: what its
    /// queue holds is unsettled; everything else it was given is settled.
    fn groups(&self) -> Vec<GroupInfo> {
        let groups: Vec<(String, Arc<Queue>)> = self
            .registry
            .lock()
            .groups
            .iter()
            .map(|(n, q)| (n.clone(), q.clone()))
            .collect();
        let topics: Vec<(Topic, u64)> = self
            .topics
            .read()
            .values()
            .map(|t| (t.name.clone(), t.inner.lock().last_seq))
            .filter(|(_, last)| *last > 0)
            .collect();
        let mut list: Vec<GroupInfo> = groups
            .into_iter()
            .map(|(name, queue)| {
                let held = queue.unsettled();
                let mut standing: Vec<GroupTopic> = topics
                    .iter()
                    .filter(|(t, _)| queue.follows(t))
                    .map(|(t, last)| {
                        let seqs = held.iter().filter(|(ht, _)| ht == t).map(|(_, s)| *s);
                        let (lag, lowest) =
                            seqs.fold((0, None), |(n, low): (u64, Option<u64>), s| {
                                (n + 1, Some(low.map_or(s, |l| l.min(s))))
                            });
                        GroupTopic::new(t.clone(), lowest.map_or(*last, |l| l - 1), *last, lag)
                    })
                    .collect();
                standing.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
                let patterns = queue
                    .spec()
                    .patterns
                    .iter()
                    .map(|p| p.to_string())
                    .collect();
                GroupInfo::new(name, patterns, standing)
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    fn topic(&self, name: &Topic) -> Arc<TopicState> {
        if let Some(t) = self.topics.read().get(name.as_str()) {
            return t.clone();
        }
        let registry = self.registry.lock();
        let mut topics = self.topics.write();
        topics
            .entry(name.clone())
            .or_insert_with(|| {
                let subs: Vec<Arc<Queue>> = registry
                    .queues
                    .iter()
                    .filter(|q| q.follows(name))
                    .cloned()
                    .collect();
                Arc::new(TopicState {
                    name: name.clone(),
                    inner: Mutex::new(TopicInner {
                        last_seq: 0,
                        history: VecDeque::new(),
                        subs: subs.into(),
                        version: 0,
                        dedupe: Dedupe::default(),
                    }),
                })
            })
            .clone()
    }

    /// Attach a new queue to every existing topic it follows, replaying the
    /// retained history from `start`. Caller holds the registry lock.
    fn attach(&self, queue: &Arc<Queue>, start: StartPosition) {
        let topics = self.topics.read();
        for ts in topics.values().filter(|t| queue.follows(&t.name)) {
            let mut inner = ts.inner.lock();
            self.count_skipped(&ts.name, &inner, start);
            let replay: Vec<Arc<Envelope>> = match start {
                StartPosition::Latest => Vec::new(),
                StartPosition::Earliest => inner.history.iter().cloned().collect(),
                StartPosition::Seq(from) => inner
                    .history
                    .iter()
                    .filter(|e| e.seq().unwrap_or(0) >= from)
                    .cloned()
                    .collect(),
                StartPosition::Time(t) => inner
                    .history
                    .iter()
                    .filter(|e| e.timestamp().timestamp_millis() >= t.timestamp_millis())
                    .cloned()
                    .collect(),
            };
            queue.push_replay(replay);
            let mut subs: Vec<Arc<Queue>> = inner.subs.to_vec();
            subs.push(queue.clone());
            inner.subs = subs.into();
            inner.version += 1;
        }
    }

    /// Log and count the events a start at `Earliest` or a `seq` asked for
    /// that `topic` no longer keeps (DESIGN.md §4.5: the memory store keeps
    /// the last `history_size`). A start at a time cannot tell how many of
    /// the events it lost were as late as the time, so counts nothing.
    fn count_skipped(&self, topic: &Topic, inner: &TopicInner, start: StartPosition) {
        let first_kept = inner
            .history
            .front()
            .and_then(|e| e.seq())
            .unwrap_or(inner.last_seq + 1);
        let skipped = match start {
            StartPosition::Earliest => first_kept - 1,
            StartPosition::Seq(from) => first_kept.saturating_sub(from.max(1)),
            StartPosition::Latest | StartPosition::Time(_) => 0,
        };
        if skipped == 0 {
            return;
        }
        tracing::warn!(
            topic = topic.as_str(),
            skipped,
            first_kept,
            history_size = self.config.history_size,
            "a subscription starts past events the memory store no longer keeps"
        );
        if let Some(metrics) = self.metrics.get() {
            metrics
                .counter(START_SKIPPED, &[("topic", topic.as_str())])
                .add(skipped);
        }
    }

    /// Detach a queue that lost its last member. Caller holds the registry lock.
    fn detach(&self, registry: &mut Registry, queue: &Arc<Queue>) {
        registry.queues.retain(|q| !Arc::ptr_eq(q, queue));
        if let Some(g) = queue.group() {
            registry.groups.remove(g);
        }
        let topics = self.topics.read();
        for ts in topics.values().filter(|t| queue.follows(&t.name)) {
            let mut inner = ts.inner.lock();
            let subs: Vec<Arc<Queue>> = inner
                .subs
                .iter()
                .filter(|q| !Arc::ptr_eq(q, queue))
                .cloned()
                .collect();
            inner.subs = subs.into();
            inner.version += 1;
        }
        queue.close();
    }

    fn subscribe(self: &Arc<Self>, spec: SubscribeSpec) -> Result<Subscription> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        if spec.patterns.is_empty() {
            return Err(Error::validation(
                "a subscription needs at least one pattern",
            ));
        }
        if spec.buffer == 0
            || spec.buffer > tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize)
        {
            return Err(Error::validation(format!(
                "subscription buffer {} is out of range",
                spec.buffer
            )));
        }
        if spec.start == StartPosition::Seq(0) {
            return Err(Error::validation("start seq must be at least 1"));
        }
        let max_in_flight = spec.max_in_flight;
        let mut registry = self.registry.lock();
        let queue = match spec.group.as_deref().and_then(|g| registry.groups.get(g)) {
            Some(existing) => {
                let held = existing.spec();
                crate::backend::group::check_member(
                    existing.group().unwrap_or_default(),
                    &crate::backend::group::patterns_text(held),
                    crate::backend::group::kind_bits(held),
                    &spec,
                )?;
                existing.join();
                existing.clone()
            }
            None => {
                let start = spec.start;
                let host: Weak<dyn QueueHost> = Arc::downgrade(self) as Weak<Shared>;
                let queue = Queue::new(spec, host);
                queue.join();
                self.attach(&queue, start);
                registry.queues.push(queue.clone());
                if let Some(g) = queue.group() {
                    registry.groups.insert(g.to_owned(), queue.clone());
                }
                queue
            }
        };
        drop(registry);
        Ok(queue::member(queue, max_in_flight))
    }

    async fn publish(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Topics of the batch in name order (the lock order), with the batch
        // positions of their envelopes.
        let mut by_topic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in batch.iter().enumerate() {
            by_topic.entry(e.topic().as_str()).or_default().push(i);
        }
        let topics: Vec<(Arc<TopicState>, Vec<usize>)> = by_topic
            .into_values()
            .map(|idx| (self.topic(batch[idx[0]].topic()), idx))
            .collect();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let snapshot: Vec<(u64, Arc<[Arc<Queue>]>)> = topics
                .iter()
                .map(|(t, _)| {
                    let inner = t.inner.lock();
                    (inner.version, inner.subs.clone())
                })
                .collect();
            let needs = room_needed(&batch, &topics, &snapshot);
            let reserved = self.reserve(&needs, &mut deadline).await?;
            let mut guards: Vec<_> = topics.iter().map(|(t, _)| t.inner.lock()).collect();
            if guards
                .iter()
                .zip(&snapshot)
                .any(|(g, (v, _))| g.version != *v)
            {
                drop(guards);
                release(&reserved);
                continue;
            }
            for (g, (t, idx)) in guards.iter().zip(&topics) {
                if g.last_seq.checked_add(idx.len() as u64).is_none() {
                    drop(guards);
                    release(&reserved);
                    return Err(Error::internal(format!(
                        "sequence of `{}` is exhausted",
                        t.name
                    )));
                }
            }
            let now = Instant::now();
            let mut seqs = vec![0u64; batch.len()];
            let mut batch: Vec<Option<Envelope>> = batch.into_iter().map(Some).collect();
            let mut appended: Vec<Vec<(usize, Arc<Envelope>)>> = Vec::with_capacity(topics.len());
            for (g, (_, idx)) in guards.iter_mut().zip(&topics) {
                let g = &mut **g;
                g.dedupe.prune(
                    now,
                    self.config.delivery.dedupe_window_duration(),
                    self.config.dedupe_capacity,
                );
                let dedupe_on = !self.config.delivery.dedupe_window_duration().is_zero()
                    && self.config.dedupe_capacity > 0;
                let mut fresh = Vec::with_capacity(idx.len());
                for &i in idx {
                    let Some(mut env) = batch[i].take() else {
                        continue;
                    };
                    let key = dedupe_on.then(|| DedupeKey::of(&env));
                    if let Some(seq) = key.as_ref().and_then(|k| g.dedupe.seen.get(k)) {
                        seqs[i] = *seq;
                        continue;
                    }
                    g.last_seq += 1;
                    env.seq = Some(g.last_seq);
                    env.attempt = 1;
                    seqs[i] = g.last_seq;
                    if let Some(k) = key {
                        g.dedupe.seen.insert(k.clone(), g.last_seq);
                        g.dedupe.order.push_back((now, k));
                    }
                    let env = Arc::new(env);
                    if self.config.history_size > 0 {
                        if g.history.len() >= self.config.history_size {
                            g.history.pop_front();
                        }
                        g.history.push_back(env.clone());
                    }
                    fresh.push((i, env));
                }
                appended.push(fresh);
            }
            for (queue, n) in &reserved {
                let mut events = Vec::new();
                let mut topics_fed = 0;
                for (i, (_, subs)) in snapshot.iter().enumerate() {
                    if subs.iter().any(|q| Arc::ptr_eq(q, queue)) {
                        topics_fed += 1;
                        events.extend(
                            appended[i]
                                .iter()
                                .filter(|(_, e)| queue.spec().kinds.allows(e.kind()))
                                .cloned(),
                        );
                    }
                }
                if topics_fed > 1 {
                    // Keep the batch's order across topics for this subscriber.
                    events.sort_unstable_by_key(|(i, _)| *i);
                }
                let events: Vec<Arc<Envelope>> = events.into_iter().map(|(_, e)| e).collect();
                let used = events.len() as u32;
                queue.push_published(events);
                if *n > used {
                    queue.release(*n - used);
                }
            }
            drop(guards);
            return Ok(seqs);
        }
    }

    /// Reserve room in every queue; waits up to the publish timeout.
    async fn reserve(
        &self,
        needs: &[(Arc<Queue>, u32)],
        deadline: &mut Option<tokio::time::Instant>,
    ) -> Result<Vec<(Arc<Queue>, u32)>> {
        let mut reserved: Vec<(Arc<Queue>, u32)> = Vec::with_capacity(needs.len());
        for (queue, n) in needs {
            if *n as usize > queue.spec().buffer {
                release(&reserved);
                return Err(Error::new(
                    ErrorCode::Backpressure,
                    format!(
                        "a batch of {n} events does not fit a subscription buffer of {}",
                        queue.spec().buffer
                    ),
                ));
            }
            match queue.permits().try_acquire_many(*n) {
                Ok(p) => {
                    p.forget();
                    reserved.push((queue.clone(), *n));
                    continue;
                }
                Err(TryAcquireError::Closed) => continue,
                Err(TryAcquireError::NoPermits) => {}
            }
            let until = *deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + self.config.delivery.timeout_duration()
            });
            match tokio::time::timeout_at(until, queue.permits().acquire_many(*n)).await {
                Ok(Ok(p)) => {
                    p.forget();
                    reserved.push((queue.clone(), *n));
                }
                Ok(Err(_closed)) => {}
                Err(_elapsed) => {
                    release(&reserved);
                    return Err(Error::new(
                        ErrorCode::Backpressure,
                        format!(
                            "a subscriber's buffer ({} events) stayed full for {:?}; nothing was published",
                            queue.spec().buffer,
                            self.config.delivery.timeout_duration()
                        ),
                    ));
                }
            }
        }
        Ok(reserved)
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut registry = self.registry.lock();
        for q in registry.queues.drain(..) {
            q.close();
        }
        registry.groups.clear();
        for ts in self.topics.read().values() {
            let mut inner = ts.inner.lock();
            inner.subs = Vec::new().into();
            inner.version += 1;
        }
    }
}

fn release(reserved: &[(Arc<Queue>, u32)]) {
    for (q, n) in reserved {
        q.release(*n);
    }
}

/// For each distinct queue fed by the batch's topics, how many of the batch's
/// events it will receive (dedupe may lower that; the rest is released).
fn room_needed(
    batch: &[Envelope],
    topics: &[(Arc<TopicState>, Vec<usize>)],
    snapshot: &[(u64, Arc<[Arc<Queue>]>)],
) -> Vec<(Arc<Queue>, u32)> {
    let mut needs: Vec<(Arc<Queue>, u32)> = Vec::new();
    for ((_, idx), (_, subs)) in topics.iter().zip(snapshot) {
        for q in subs.iter() {
            let n = idx
                .iter()
                .filter(|&&i| q.spec().kinds.allows(batch[i].kind()))
                .count() as u32;
            if n == 0 {
                continue;
            }
            match needs.iter_mut().find(|(x, _)| Arc::ptr_eq(x, q)) {
                Some((_, m)) => *m += n,
                None => needs.push((q.clone(), n)),
            }
        }
    }
    needs
}

fn closed_error() -> Error {
    Error::new(ErrorCode::Unavailable, "the memory transport is closed")
}

impl Transport for MemoryTransport {
    fn publish(&self, batch: Vec<Envelope>) -> impl Future<Output = Result<Vec<u64>>> + Send {
        self.shared.publish(batch)
    }

    fn subscribe(&self, spec: SubscribeSpec) -> impl Future<Output = Result<Subscription>> + Send {
        let r = self.shared.subscribe(spec);
        std::future::ready(r)
    }

    fn last_seq(&self, topic: &Topic) -> impl Future<Output = Result<Option<u64>>> + Send {
        let seq = self
            .shared
            .topics
            .read()
            .get(topic.as_str())
            .map(|t| t.inner.lock().last_seq)
            .filter(|s| *s > 0);
        std::future::ready(Ok(seq))
    }

    async fn close(&self) -> Result<()> {
        self.shared.close();
        self.shared.written().await;
        Ok(())
    }

    fn features(&self) -> Features {
        Features::MEMORY
    }

    fn attach_metrics(&self, metrics: &Metrics) {
        let _ = self.shared.metrics.set(metrics.clone());
        self.shared.discards.attach(metrics);
    }

    /// A [`MemoryDedupe`]: the process is all this store has.
    fn processed_ids(&self, window: Duration) -> Result<Arc<dyn DedupeStore>> {
        Ok(Arc::new(MemoryDedupe::with_window(window)?))
    }

    /// A [`MemorySchemas`], shared by every bus on this store.
    fn schemas(&self) -> Result<Arc<dyn SchemaStore>> {
        Ok(self.shared.schemas.clone())
    }
}

impl Inspect for MemoryTransport {
    fn topics(&self) -> impl Future<Output = Result<Vec<TopicInfo>>> + Send {
        let mut list: Vec<TopicInfo> = self
            .shared
            .topics
            .read()
            .values()
            .map(|t| TopicInfo::new(t.name.clone(), t.inner.lock().last_seq))
            .filter(|t| t.last_seq > 0)
            .collect();
        list.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        std::future::ready(Ok(list))
    }

    fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Envelope>>> + Send {
        let events = match self.shared.topics.read().get(topic.as_str()) {
            None => Vec::new(),
            Some(t) => t
                .inner
                .lock()
                .history
                .iter()
                .filter(|e| match &from {
                    StartPosition::Earliest => true,
                    StartPosition::Latest => false,
                    StartPosition::Seq(n) => e.seq().is_some_and(|s| s >= *n),
                    StartPosition::Time(t) => e.timestamp() >= *t,
                })
                .take(limit)
                .map(|e| Envelope::clone(e))
                .collect(),
        };
        std::future::ready(Ok(events))
    }

    fn groups(&self) -> impl Future<Output = Result<Vec<GroupInfo>>> + Send {
        std::future::ready(Ok(self.shared.groups()))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        self.shared.written().await;
        let dead = self.shared.dead.lock();
        let selected = dead.entries.iter().filter(|d| filter.matches(d));
        Ok(selected
            .take(filter.max().unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.shared.written().await;
        let mut dead = self.shared.dead.lock();
        let mut left = filter.max().unwrap_or(usize::MAX);
        let before = dead.entries.len();
        dead.entries.retain(|d| {
            let purge = left > 0 && filter.matches(d);
            if purge {
                left -= 1;
            }
            !purge
        });
        Ok((before - dead.entries.len()) as u64)
    }

    async fn delivery_state(&self, topic: &Topic, seq: u64, group: &str) -> Result<DeliveryState> {
        self.shared.written().await;
        self.shared.delivery_state(topic, seq, group)
    }
}

#[cfg(test)]
mod tests;

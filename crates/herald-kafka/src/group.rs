//! Consumer groups: a Kafka consumer group per herald group, offsets
//! committed on ack.
//!
//! Owns [`subscribe`] for subscriptions with a group, the offset
//! bookkeeping (and reading a group's committed offsets back:
//! [`committed`], [`committed_offsets`]), the record of each group's
//! patterns on `<environment>._groups`, and this process's consumers of a
//! group ([`local_groups`]). Does not own what operators are shown
//! (`inspect`: groups, delivery state), nor the dead-letter record it
//! writes (`log::write_dead_letter`). Each process has one Kafka consumer per
//! (group, patterns) — a member of the Kafka group `<environment>.<group>`,
//! subscribed to its patterns as a regex — feeding one delivery queue that
//! every local member of the group pulls from. So across processes the
//! group shares partitions (same `key` → same partition → one process at a
//! time, in order), and within a process the queue gives the rest of
//! DESIGN.md §4.4: keyless events shared among members, same-key events one
//! member at a time, priority, ack wait, nack delay, `max_deliver`.
//!
//! Offsets: per partition, the committed offset is the first unsettled
//! offset, and the settled offsets above it travel in the commit's metadata
//! (`h1:` and ranges), so an event acked while an earlier one is still held
//! is not redelivered after a restart. An ack returns once its commit is on
//! the brokers (acks are committed together). A dead letter is written
//! before its offset counts as settled; a failed write is retried, logged
//! with the correlation id, and keeps the offset uncommitted.
//!
//! Where a group starts is fixed when the group is made (DESIGN.md §4.5):
//! the first subscribe of a group commits, from outside the Kafka group,
//! its mark (an offset on `<environment>._groups`) and — for `Latest` — the
//! end of every partition its patterns match then, in one commit
//! (`fix_start`). Rebalances: when partitions are assigned, each starts at
//! its committed offset, or — for a partition the group never committed,
//! so one made after the group — at the start position (`Latest`: its
//! beginning), and that start is committed at once so every member agrees.
//! So a group made before its topics have events gets them all, however
//! late its members join, after they all left, after restarts. When
//! partitions are revoked, what is settled is committed, the partition's
//! waiting events are withdrawn from the queue, and acks of its deliveries
//! still in flight fail as `lease lost` (they come again to the new owner).

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use herald::backend::dead_lettering::DeadLetterWrites;
use herald::backend::queue::{self, Queue, QueueHost};
use herald::backend::transport::DeliveryState;
use herald::backend::BoxFuture;
use herald::FailureSource;
use herald::{
    DeadLetter, Envelope, ErrorCode, Result, StartPosition, SubscribeSpec, Subscription, Topic,
};
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, partition_of, record_position, Position};
use crate::conn::{blocking, client_config, Inner, LOOKUP_TIMEOUT};
use crate::errors;
use crate::feed::{self, Hooks};
use crate::log::{write_dead_letter, Raw};
use crate::rebalance::{RebalanceKind, Rebalanced, CONSUMER_LAG};

/// How long a revocation waits for deliveries in flight to settle.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// How long a new subscription waits for its first partitions.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// The most metadata a commit carries (brokers allow 4 KiB by default).
const METADATA_MAX: usize = 3500;

/// One process's consumer of one group.
pub(crate) struct Group {
    inner: Weak<Inner>,
    /// The runtime the group's tasks run on (its consumer thread has none).
    runtime: tokio::runtime::Handle,
    spec: SubscribeSpec,
    kafka_group: String,
    queue: OnceLock<Weak<Queue>>,
    consumer: OnceLock<Weak<BaseConsumer<GroupContext>>>,
    parts: Mutex<HashMap<(String, i32), Part>>,
    next_generation: AtomicU64,
    /// Turns `true` once the consumer holds its first partitions, or has
    /// stopped (then the queue is closed).
    joined: tokio::sync::watch::Sender<bool>,
    commits: mpsc::UnboundedSender<oneshot::Sender<Result<()>>>,
    /// The store's dead-letter writes (the queue counts its own in them).
    dead_letter_writes: DeadLetterWrites,
}

/// Where one assigned partition stands.
#[derive(Debug, Default)]
struct Part {
    generation: u64,
    /// The first unsettled offset: what is committed.
    next: i64,
    /// Settled offsets above `next`.
    settled: BTreeSet<i64>,
    /// Offsets above `next` delivered before (by an earlier consumer), with
    /// how many times.
    delivered: HashMap<i64, u32>,
}

impl Part {
    fn settle(&mut self, offset: i64) {
        if offset < self.next {
            return;
        }
        self.settled.insert(offset);
        while self.settled.remove(&self.next) {
            self.next += 1;
        }
    }

    /// Of `delivered` (by Kafka topic), this partition's unsettled ones.
    fn counts(
        &self,
        kafka_topic: &str,
        delivered: &HashMap<String, Vec<(i64, u32)>>,
    ) -> Vec<(i64, u32)> {
        delivered
            .get(kafka_topic)
            .into_iter()
            .flatten()
            .filter(|(o, _)| !self.is_settled(*o))
            .copied()
            .collect()
    }

    fn is_settled(&self, offset: i64) -> bool {
        offset < self.next || self.settled.contains(&offset)
    }

    /// The settled offsets above `next`, and `delivered` (offset, times)
    /// of events not settled, as commit metadata.
    fn metadata(&self, delivered: &[(i64, u32)]) -> String {
        let mut out = String::from("h1:");
        let mut it = self.settled.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            let range = if end == start {
                format!("{start},")
            } else {
                format!("{start}-{end},")
            };
            if out.len() + range.len() > METADATA_MAX {
                break;
            }
            out.push_str(&range);
        }
        out.push(';');
        for (offset, times) in delivered {
            let one = format!("{offset}={times},");
            if out.len() + one.len() > METADATA_MAX {
                break;
            }
            out.push_str(&one);
        }
        out
    }

    /// The settled offsets and the delivery counts commit metadata names
    /// (nothing for metadata that is not herald's).
    fn parse_metadata(meta: &str) -> (BTreeSet<i64>, HashMap<i64, u32>) {
        let mut out = BTreeSet::new();
        let mut delivered = HashMap::new();
        let Some(rest) = meta.strip_prefix("h1:") else {
            return (out, delivered);
        };
        let (ranges, counts) = rest.split_once(';').unwrap_or((rest, ""));
        for one in counts.split(',').filter(|c| !c.is_empty()) {
            if let Some((o, n)) = one.split_once('=') {
                if let (Ok(o), Ok(n)) = (o.parse::<i64>(), n.parse::<u32>()) {
                    delivered.insert(o, n);
                }
            }
        }
        for range in ranges.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                if b >= a && b - a < 1_000_000 {
                    out.extend(a..=b);
                }
            }
        }
        (out, delivered)
    }
}

/// Subscribe with `spec.group`: join this process's consumer of the group,
/// or start one and wait for its first assignment.
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    inner
        .config
        .keyless()
        .check(&spec, inner.config.partition_count(), "Kafka")?;
    let group_name = spec.group.clone().unwrap_or_default();
    let key = group_key(&group_name, &spec);
    if let Some(group) = local(inner, &key) {
        if let Some(queue) = group.queue() {
            if !queue.is_closed() {
                herald::backend::group::check_member(
                    &group_name,
                    &herald::backend::group::patterns_text(queue.spec()),
                    herald::backend::group::kind_bits(queue.spec()),
                    &spec,
                )?;
                queue.join();
                return Ok(queue::member(queue, spec.max_in_flight));
            }
        }
    }
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let (joined, mut joined_rx) = tokio::sync::watch::channel(false);
    let group = Arc::new(Group {
        inner: Arc::downgrade(inner),
        runtime: tokio::runtime::Handle::current(),
        kafka_group: inner.config.kafka_topic(&group_name),
        spec: spec.clone(),
        queue: OnceLock::new(),
        consumer: OnceLock::new(),
        parts: Mutex::new(HashMap::new()),
        next_generation: AtomicU64::new(1),
        joined,
        commits: commit_tx,
        dead_letter_writes: inner.dead_letter_writes.clone(),
    });
    let patterns: Vec<String> = spec
        .patterns
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    record_group(inner, &group_name, &patterns).await?;
    let matching = crate::tail::matching(inner, &spec).await?;
    fix_start(inner, &group_name, &spec, &matching).await?;
    let host: Weak<dyn QueueHost> = Arc::downgrade(&group) as Weak<Group>;
    let queue = Queue::new(spec.clone(), host);
    queue.join();
    inner.register(&queue)?;
    let _ = group.queue.set(Arc::downgrade(&queue));
    // Counted before it exists, so `close` waits until its thread has
    // dropped it (feed::run), having left the group.
    let running = inner.consumer_started()?;

    let mut config = client_config(inner.config.consumer_properties(&group.kafka_group));
    // Statistics each second, when a bus records metrics: the partitions'
    // high watermarks, for the lag gauges (GroupContext::stats).
    if inner.metrics.get().is_some() {
        config.set("statistics.interval.ms", "1000");
    }
    let consumer: BaseConsumer<GroupContext> = config
        .create_with_context(GroupContext {
            group: group.clone(),
        })
        .map_err(|e| errors::kafka("create a group consumer", &e))?;
    let regexes: Vec<String> = spec
        .patterns
        .iter()
        .map(|p| regex_of(inner.config.environment_name(), p.as_str()))
        .collect();
    let refs: Vec<&str> = regexes.iter().map(String::as_str).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| errors::kafka("subscribe a group", &e))?;
    let consumer = Arc::new(consumer);
    let _ = group.consumer.set(Arc::downgrade(&consumer));
    tokio::spawn(committer(Arc::downgrade(&group), commit_rx));
    let held: Arc<dyn Any + Send + Sync> = group.clone();
    inner.groups.lock().insert(key, Arc::downgrade(&held));

    let hooks = GroupHooks {
        group: group.clone(),
    };
    let topic_inner = Arc::downgrade(inner);
    let (q, stopped) = (queue.clone(), group.clone());
    std::thread::Builder::new()
        .name("herald-kafka-group".into())
        .spawn(move || {
            feed::run(consumer, q.clone(), hooks, |name| {
                topic_inner.upgrade().and_then(|i| i.topic_of(name))
            });
            // The store or the group closed: nothing feeds the queue now.
            q.close();
            stopped.joined.send_replace(true);
            drop(running);
        })
        .map_err(|e| herald::Error::internal(format!("start a consumer thread: {e}")))?;
    // Members of this process take part at once: wait until the group holds
    // its first partitions. None to wait for when no topic matches yet,
    // whatever the start: a topic made later is found by the metadata
    // refresh and read from its beginning. (Waiting for it cost a group
    // made before its topic the whole JOIN_WAIT: nothing gets assigned.)
    if matching.iter().any(|(_, partitions)| *partitions > 0) {
        let waited = tokio::time::timeout(JOIN_WAIT, joined_rx.wait_for(|j| *j)).await;
        if waited.is_err() {
            tracing::warn!(group = %group_name, "Kafka: no partitions assigned within {JOIN_WAIT:?}; the group goes on joining");
        }
    }
    if queue.is_closed() {
        // The store closed while the consumer joined.
        return Err(errors::closed());
    }
    Ok(queue::member(queue, spec.max_in_flight))
}

/// Fix where group `group` starts, once, when it is made: a group is made
/// when its mark (a committed offset on `<environment>._groups`) is not
/// there. For `Latest` the end of every partition `matching` has now is
/// committed with the mark, in one commit, so the group starts there
/// however late its members join and whatever became of them since; a
/// partition the group has no offset for was made after it and is read
/// from its beginning. Other starts name positions that do not move and
/// are resolved per partition as it is assigned. A group that has offsets
/// and no mark was made before marks existed (an older herald's, or plain
/// clients'): it keeps its offsets and only gets the mark. A group whose
/// Kafka group has members refuses a commit from outside it: it was made
/// before too.
async fn fix_start(
    inner: &Inner,
    group: &str,
    spec: &SubscribeSpec,
    matching: &[(String, i32)],
) -> Result<()> {
    let marks = inner.config.kafka_topic(GROUPS_TOPIC);
    let mark = inner.watermarks(&marks, 0).await?.1;
    let mut ends = Vec::new();
    if spec.start == StartPosition::Latest {
        for (name, partitions) in matching {
            for p in 0..*partitions {
                ends.push((name.clone(), p, inner.watermarks(name, p).await?.1));
            }
        }
    }
    let config = client_config(
        inner
            .config
            .consumer_properties(&inner.config.kafka_topic(group)),
    );
    let fixed = blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut ask = TopicPartitionList::new();
        ask.add_partition(&marks, 0);
        for (name, p, _) in &ends {
            ask.add_partition(name, *p);
        }
        let committed = consumer.committed_offsets(ask, LOOKUP_TIMEOUT)?;
        let has_offset = |name: &str, p: i32| {
            committed
                .find_partition(name, p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(_)))
        };
        if has_offset(&marks, 0) {
            return Ok(());
        }
        let made_before = ends.iter().any(|(name, p, _)| has_offset(name, *p));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&marks, 0, Offset::Offset(mark))?;
        if !made_before {
            for (name, p, end) in &ends {
                tpl.add_partition_offset(name, *p, Offset::Offset(*end))?;
            }
        }
        consumer.commit(&tpl, CommitMode::Sync)
    })
    .await?;
    match fixed {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::RebalanceInProgress
                )
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(errors::kafka(
            &format!("fix where group {group:?} starts"),
            &e,
        )),
    }
}

/// This process's running consumer of (group, patterns) `key`, from the
/// store's registry (which holds it as `Any`).
fn local(inner: &Inner, key: &str) -> Option<Arc<Group>> {
    let held = inner.groups.lock().get(key).and_then(Weak::upgrade)?;
    held.downcast::<Group>().ok()
}

/// This process's running consumers of herald group `group` (one per set
/// of patterns).
pub(crate) fn local_groups(inner: &Inner, group: &str) -> Vec<Arc<Group>> {
    inner
        .groups
        .lock()
        .values()
        .filter_map(Weak::upgrade)
        .filter_map(|held| held.downcast::<Group>().ok())
        .filter(|g| g.spec.group.as_deref() == Some(group))
        .collect()
}

fn group_key(group: &str, spec: &SubscribeSpec) -> String {
    let mut patterns: Vec<&str> = spec.patterns.iter().map(|p| p.as_str()).collect();
    patterns.sort_unstable();
    format!("{group}\u{0}{}", patterns.join("\u{0}"))
}

/// A herald pattern as a librdkafka topic regex in `environment`.
pub(crate) fn regex_of(environment: &str, pattern: &str) -> String {
    let mut out = format!("^{}", regex_escape(environment));
    for seg in pattern.split('.') {
        out.push_str("\\.");
        match seg {
            "*" => out.push_str("[^.]+"),
            ">" => out.push_str(".+"),
            s => out.push_str(&regex_escape(s)),
        }
    }
    out.push('$');
    out
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Group {
    fn queue(&self) -> Option<Arc<Queue>> {
        self.queue.get().and_then(Weak::upgrade)
    }

    fn inner(&self) -> Option<Arc<Inner>> {
        self.inner.upgrade()
    }

    /// Where the group starts a partition it never committed.
    fn start_of(&self, consumer: &BaseConsumer<GroupContext>, topic: &str, p: i32) -> Offset {
        match &self.spec.start {
            StartPosition::Earliest => Offset::Beginning,
            // The partitions there when the group was made have their start
            // committed (`fix_start`): one without came later.
            StartPosition::Latest => Offset::Beginning,
            StartPosition::Seq(n) => {
                Offset::Offset(i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX))
            }
            StartPosition::Time(t) => {
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(t.timestamp_millis()));
                match consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT) {
                    Ok(found) => match found.elements().first().map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Offset::Offset(o),
                        _ => consumer
                            .fetch_watermarks(topic, p, LOOKUP_TIMEOUT)
                            .map_or(Offset::End, |(_, h)| Offset::Offset(h)),
                    },
                    Err(_) => Offset::End,
                }
            }
        }
    }

    /// Partitions assigned: resolve where each starts, then take them.
    fn assign(&self, consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
        let committed = consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT);
        let mut take = TopicPartitionList::new();
        let mut fresh = TopicPartitionList::new();
        let mut parts = Vec::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_owned(), e.partition());
            let stored = committed
                .as_ref()
                .ok()
                .and_then(|c| c.find_partition(&topic, p))
                .map(|c| {
                    let meta =
                        std::panic::catch_unwind(|| c.metadata().to_owned()).unwrap_or_default();
                    (c.offset(), meta)
                });
            let (start, (settled, delivered)) = match stored {
                Some((Offset::Offset(o), meta)) => (o, Part::parse_metadata(&meta)),
                _ => {
                    let start = match self.start_of(consumer, &topic, p) {
                        Offset::Offset(o) => o,
                        Offset::Beginning => consumer
                            .fetch_watermarks(&topic, p, LOOKUP_TIMEOUT)
                            .map_or(0, |(low, _)| low),
                        _ => consumer
                            .fetch_watermarks(&topic, p, LOOKUP_TIMEOUT)
                            .map_or(0, |(_, high)| high),
                    };
                    let _ = fresh.add_partition_offset(&topic, p, Offset::Offset(start));
                    (start, Default::default())
                }
            };
            let _ = take.add_partition_offset(&topic, p, Offset::Offset(start));
            let generation = self.next_generation.fetch_add(1, Ordering::AcqRel);
            parts.push((
                (topic, p),
                Part {
                    generation,
                    next: start,
                    settled,
                    delivered,
                },
            ));
        }
        self.parts.lock().extend(parts);
        if fresh.count() > 0 {
            if let Err(e) = consumer.commit(&fresh, CommitMode::Sync) {
                tracing::warn!(group = %self.kafka_group, error = %e, "Kafka: the start offsets of new partitions were not committed");
            }
        }
        if let Err(e) = consumer.assign(&take) {
            tracing::error!(group = %self.kafka_group, error = %e, "Kafka: partitions could not be taken");
        }
        self.joined.send_replace(true);
        tracing::info!(group = %self.kafka_group, partitions = take.count(), "Kafka: partitions assigned");
        self.tell(RebalanceKind::Assigned, &take);
    }

    /// Tell this store's rebalance watchers; a revoked partition's lag
    /// gauge goes to 0 (its new owner reports it).
    fn tell(&self, kind: RebalanceKind, tpl: &TopicPartitionList) {
        let Some(inner) = self.inner() else { return };
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if kind == RebalanceKind::Revoked {
            for (name, p) in &partitions {
                if let Some(gauge) = self.lag_gauge(&inner, name, *p) {
                    gauge.set(0.0);
                }
            }
        }
        inner.rebalanced(&Rebalanced {
            group: self.spec.group.clone().unwrap_or_default(),
            kind,
            partitions,
        });
    }

    /// The lag gauge of partition `p` of Kafka topic `name`, when a bus on
    /// this store records metrics.
    fn lag_gauge(&self, inner: &Inner, name: &str, p: i32) -> Option<herald::backend::Gauge> {
        let metrics = inner.metrics.get()?;
        let topic = inner.topic_of(name)?;
        Some(metrics.gauge(
            CONSUMER_LAG,
            &[
                ("group", self.spec.group.as_deref().unwrap_or_default()),
                ("topic", topic.as_str()),
                ("partition", &p.to_string()),
            ],
        ))
    }

    /// Set the lag gauge of each partition held: its high watermark in
    /// librdkafka's latest statistics less its first unsettled offset.
    fn report_lag(&self, stats: &rdkafka::Statistics) {
        let Some(inner) = self.inner() else { return };
        let held: Vec<((String, i32), i64)> = self
            .parts
            .lock()
            .iter()
            .map(|(k, part)| (k.clone(), part.next))
            .collect();
        for ((name, p), next) in held {
            let Some(high) = stats
                .topics
                .get(&name)
                .and_then(|t| t.partitions.get(&p))
                .map(|part| part.hi_offset)
                .filter(|h| *h >= 0)
            else {
                continue;
            };
            if let Some(gauge) = self.lag_gauge(&inner, &name, p) {
                gauge.set((high - next).max(0) as f64);
            }
        }
    }

    /// Partitions revoked: commit what is settled, withdraw what waits.
    fn revoke(&self, consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
        let gone: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let delivered = self.delivered();
        if let (Some(queue), Some(inner)) = (self.queue(), self.inner()) {
            let env = inner.config.environment_name().to_owned();
            let withdrawn = queue.withdraw(|e| {
                let name = format!("{env}.{}", e.topic());
                gone.iter()
                    .any(|(t, p)| *t == name && partition_of(e) == Some(*p))
            });
            tracing::info!(group = %self.kafka_group, partitions = gone.len(), withdrawn, "Kafka: partitions revoked");
            // Let deliveries in flight finish (their acks still commit), so
            // the next owner does not run a key while this one still does.
            let deadline = std::time::Instant::now() + REVOKE_WAIT;
            while std::time::Instant::now() < deadline && self.holds(&queue, &inner, &gone) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let commit = {
            let mut parts = self.parts.lock();
            let mut commit = TopicPartitionList::new();
            for key in &gone {
                if let Some(part) = parts.remove(key) {
                    if commit
                        .add_partition_offset(&key.0, key.1, Offset::Offset(part.next))
                        .is_ok()
                    {
                        if let Some(mut e) = commit.find_partition(&key.0, key.1) {
                            e.set_metadata(part.metadata(&part.counts(&key.0, &delivered)));
                        }
                    }
                }
            }
            commit
        };
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(group = %self.kafka_group, error = %e, "Kafka: offsets of revoked partitions were not committed; their settled events may come again");
            }
        }
        if let Err(e) = consumer.unassign() {
            tracing::warn!(group = %self.kafka_group, error = %e, "Kafka: unassign");
        }
        self.tell(RebalanceKind::Revoked, tpl);
    }

    /// Whether the queue still holds an unsettled event of one of the
    /// partitions `gone` (by topic and offset: the queue knows no partitions).
    fn holds(&self, queue: &Queue, inner: &Inner, gone: &[(String, i32)]) -> bool {
        let unsettled = queue.unsettled();
        let parts = self.parts.lock();
        unsettled.iter().any(|(topic, seq)| {
            let name = inner.config.kafka_topic(topic.as_str());
            gone.iter().any(|(t, p)| {
                *t == name
                    && parts
                        .get(&(t.clone(), *p))
                        .is_some_and(|part| !part.is_settled(*seq as i64 - 1))
            })
        })
    }

    /// The events the queue holds that were delivered at least once, by
    /// Kafka topic: (offset, deliveries so far).
    fn delivered(&self) -> HashMap<String, Vec<(i64, u32)>> {
        let mut out: HashMap<String, Vec<(i64, u32)>> = HashMap::new();
        let (Some(queue), Some(inner)) = (self.queue(), self.inner()) else {
            return out;
        };
        for (topic, seq, next) in queue.held_attempts() {
            if next > 1 && seq > 0 {
                out.entry(inner.config.kafka_topic(topic.as_str()))
                    .or_default()
                    .push((seq as i64 - 1, next - 1));
            }
        }
        out
    }

    /// Count the event at `offset` of `partition` of `kafka_topic` settled;
    /// false when the partition is not this consumer's any more.
    fn settle(&self, kafka_topic: &str, partition: i32, offset: i64) -> bool {
        match self
            .parts
            .lock()
            .get_mut(&(kafka_topic.to_owned(), partition))
        {
            Some(part) => {
                part.settle(offset);
                true
            }
            None => false,
        }
    }

    /// Commit now what every partition has settled.
    fn commit_now(&self) -> Result<()> {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return Err(herald::Error::new(
                ErrorCode::Unavailable,
                "Kafka: the group's consumer is gone",
            ));
        };
        let delivered = self.delivered();
        let tpl = {
            let parts = self.parts.lock();
            let mut tpl = TopicPartitionList::new();
            for ((t, p), part) in parts.iter() {
                if tpl
                    .add_partition_offset(t, *p, Offset::Offset(part.next))
                    .is_ok()
                {
                    if let Some(mut e) = tpl.find_partition(t, *p) {
                        e.set_metadata(part.metadata(&part.counts(t, &delivered)));
                    }
                }
            }
            tpl
        };
        if tpl.count() == 0 {
            return Ok(());
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
            errors::kafka(
                &format!("commit the offsets of group `{}`", self.kafka_group),
                &e,
            )
        })
    }

    /// Settle and commit: what an ack and a written dead letter wait for.
    fn settle_and_commit(&self, envelope: &Envelope) -> BoxFuture<'static, Result<()>> {
        let topic = envelope.topic().clone();
        let (Some(inner), Some(p), Some(seq)) =
            (self.inner(), partition_of(envelope), envelope.seq())
        else {
            return Box::pin(async { Err(herald::backend::group::lease_lost()) });
        };
        let name = inner.config.kafka_topic(topic.as_str());
        if !self.settle(&name, p, seq as i64 - 1) {
            return Box::pin(async { Err(herald::backend::group::lease_lost()) });
        }
        let (tx, rx) = oneshot::channel();
        let sent = self.commits.send(tx);
        Box::pin(async move {
            if sent.is_err() {
                return Err(herald::Error::new(
                    ErrorCode::Unavailable,
                    "Kafka: the group is closed",
                ));
            }
            rx.await.unwrap_or_else(|_| {
                Err(herald::Error::new(
                    ErrorCode::Unavailable,
                    "Kafka: the group is closed",
                ))
            })
        })
    }

    /// Where event `seq` of `topic` (Kafka topic `name`, one partition)
    /// stands in this consumer: its queue's state, or `Acked` when its
    /// partition here counts it settled; `None` when it knows nothing.
    pub(crate) fn state_of(&self, name: &str, topic: &Topic, seq: u64) -> Option<DeliveryState> {
        if let Some(s) = self.queue().and_then(|q| q.state_of(topic, seq)) {
            return Some(s);
        }
        let parts = self.parts.lock();
        let part = parts.get(&(name.to_owned(), 0))?;
        part.is_settled(seq as i64 - 1)
            .then_some(DeliveryState::Acked)
    }
}

/// Commit for every waiting ack at once, then answer them all.
async fn committer(
    group: Weak<Group>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<()>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let Some(g) = group.upgrade() else {
            return;
        };
        let result = blocking(move || g.commit_now()).await.and_then(|r| r);
        for w in waiting {
            let copy = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(herald::Error::new(e.code(), e.to_string())),
            };
            let _ = w.send(copy);
        }
    }
}

impl QueueHost for Group {
    fn max_deliver(&self) -> u32 {
        self.inner()
            .map_or(crate::config::DEFAULT_MAX_DELIVER, |i| {
                i.config.deliveries()
            })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let inner = inner.upgrade().ok_or_else(errors::closed)?;
            write_dead_letter(&inner, &letter, record_position(&letter.envelope), None).await
        })
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }

    /// Its offset counts as settled once its dead letter is written.
    fn dead_lettered(
        &self,
        _queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        Some(self.settle_and_commit(envelope))
    }

    fn acked(
        &self,
        _queue: &Queue,
        envelope: &Arc<Envelope>,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        Some(self.settle_and_commit(envelope))
    }
}

/// Group records, and each group's mark (see `fix_start`).
pub(crate) const GROUPS_TOPIC: &str = "_groups";

/// What `_groups` holds per group consumer started: its group and patterns.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupRecord {
    pub(crate) group: String,
    pub(crate) patterns: Vec<String>,
}

/// Note that `group` follows `patterns` (once per group consumer).
pub(crate) async fn record_group(inner: &Inner, group: &str, patterns: &[String]) -> Result<()> {
    let topic = inner.config.kafka_topic(GROUPS_TOPIC);
    // Compacted: each group's latest record stays, however old, where
    // retention would drop the group from `groups()` after a week.
    inner
        .ensure_topic_configured(&topic, 1, &[("cleanup.policy", "compact")])
        .await?;
    let body = serde_json::to_vec(&GroupRecord {
        group: group.to_owned(),
        patterns: patterns.to_vec(),
    })
    .map_err(|e| herald::Error::internal(format!("encode a group record: {e}")))?;
    let headers = OwnedHeaders::new().insert(Header {
        key: "content_type",
        value: Some(b"application/json".as_slice()),
    });
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
        .key(group)
        .payload(&body[..])
        .headers(headers);
    inner
        .producer
        .send(record, inner.config.timeout_duration())
        .await
        .map_err(|(e, _)| errors::kafka("record a group", &e))?;
    Ok(())
}

/// Write the dead letter of a record that does not decode, retrying (with a
/// growing pause, each failure logged with its correlation id) until it is
/// written or the store closes: it never reaches a queue, so nothing can
/// redeliver it, and its offset stays unsettled until this returns true.
pub(crate) async fn write_until_done(
    inner: &Inner,
    letter: &DeadLetter,
    at: Option<Position>,
    raw: Option<&Raw>,
) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        match write_dead_letter(inner, letter, at, raw).await {
            Ok(()) => return true,
            Err(e) if inner.is_closed() => {
                let env = &letter.envelope;
                tracing::error!(topic = %env.topic(), seq = env.seq(), group = letter.group.as_deref(), correlation_id = %env.correlation_id(), causation_id = env.causation_id().map(tracing::field::display), error = %e, "a dead letter was not written before the store closed; its event stays uncommitted and comes again");
                return false;
            }
            Err(e) => {
                let env = &letter.envelope;
                tracing::error!(topic = %env.topic(), seq = env.seq(), group = letter.group.as_deref(), correlation_id = %env.correlation_id(), causation_id = env.causation_id().map(tracing::field::display), error = %e, "a dead letter was not written; retrying (its event stays uncommitted)");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The group consumer's side of the feeding loop.
struct GroupHooks {
    group: Arc<Group>,
}

impl Hooks<GroupContext> for GroupHooks {
    fn generation(&self, kafka_topic: &str, partition: i32) -> Option<u64> {
        self.group
            .parts
            .lock()
            .get(&(kafka_topic.to_owned(), partition))
            .map(|p| p.generation)
    }

    fn admit(
        &self,
        envelope: &Envelope,
        kafka_topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<u32> {
        let mut parts = self.group.parts.lock();
        let part = parts.get_mut(&(kafka_topic.to_owned(), partition))?;
        if part.is_settled(offset) {
            return None;
        }
        if !self
            .group
            .spec
            .wants(envelope.topic().as_str(), envelope.kind())
        {
            part.settle(offset);
            return None;
        }
        Some(
            part.delivered
                .remove(&offset)
                .map_or(1, |n| n.saturating_add(1)),
        )
    }

    fn undecodable(
        &self,
        topic: Topic,
        kafka_topic: &str,
        at: Position,
        raw: (Vec<(String, String)>, Bytes),
        err: herald::Error,
    ) {
        let Some(inner) = self.group.inner() else {
            return;
        };
        // What the record gives, to carry the failure: a plain reading.
        let Ok(envelope) = codec::decode(topic, &[], None, raw.1.clone(), at) else {
            return;
        };
        tracing::warn!(topic = %envelope.topic(), partition = at.partition, offset = at.offset, error = %err, "a Kafka record does not decode; it goes to the dead letters");
        let letter = DeadLetter::new(envelope, FailureSource::Decode, err.code(), err.to_string())
            .with_group(self.group.spec.group.clone())
            .with_attempts(1);
        let group = self.group.clone();
        let kafka_topic = kafka_topic.to_owned();
        let under_way = inner.dead_letter_writes.start();
        self.group.runtime.clone().spawn(async move {
            let _under_way = under_way;
            if write_until_done(&inner, &letter, Some(at), Some(&raw)).await
                && group.settle(&kafka_topic, at.partition, at.offset)
            {
                let (tx, rx) = oneshot::channel();
                if group.commits.send(tx).is_ok() {
                    let _ = rx.await;
                }
            }
        });
    }

    fn tick(&self, _consumer: &BaseConsumer<GroupContext>) {}

    fn done(&self) -> bool {
        self.group.inner().is_none_or(|i| i.is_closed())
            || self.group.queue().is_none_or(|q| q.is_closed())
    }
}

/// The group consumer's librdkafka context: rebalances go to the [`Group`].
pub(crate) struct GroupContext {
    group: Arc<Group>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.group.report_lag(&statistics);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pre_rebalance(base_consumer, &Rebalance::Assign(tpl));
                self.group.assign(base_consumer, tpl);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(base_consumer, &Rebalance::Revoke(tpl));
                self.group.revoke(base_consumer, tpl);
            }
            other => {
                tracing::error!(group = %self.group.kafka_group, error = ?other, "Kafka: rebalance failed");
                let _ = base_consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(group = %self.group.kafka_group, error = %e, "Kafka: commit");
        }
    }
}

/// The committed offset and settled offsets of `group` on partition 0 of
/// Kafka topic `name`, if it committed any.
pub(crate) async fn committed(
    inner: &Inner,
    group: &str,
    name: &str,
) -> Result<Option<(i64, BTreeSet<i64>)>> {
    let first = committed_offsets(inner, group, name, 1)
        .await?
        .into_iter()
        .next();
    Ok(first
        .flatten()
        .map(|(o, meta)| (o, Part::parse_metadata(&meta).0)))
}

/// The committed offset and its metadata of `group` on each of the first
/// `partitions` partitions of Kafka topic `name` (`None`: never committed).
pub(crate) async fn committed_offsets(
    inner: &Inner,
    group: &str,
    name: &str,
    partitions: i32,
) -> Result<Vec<Option<(i64, String)>>> {
    let config = client_config(
        inner
            .config
            .consumer_properties(&inner.config.kafka_topic(group)),
    );
    let name = name.to_owned();
    blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| errors::kafka("create a reader", &e))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&name, p);
        }
        let found = consumer
            .committed_offsets(tpl, LOOKUP_TIMEOUT)
            .map_err(|e| errors::kafka("read a group's offsets", &e))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => {
                    let meta =
                        std::panic::catch_unwind(|| e.metadata().to_owned()).unwrap_or_default();
                    Some((o, meta))
                }
                _ => None,
            })
            .collect())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_offsets_advance_the_commit_and_travel_as_metadata() {
        let mut part = Part {
            next: 10,
            ..Part::default()
        };
        for o in [12, 13, 14, 17] {
            part.settle(o);
        }
        assert_eq!(part.next, 10);
        assert_eq!(part.metadata(&[(10, 2)]), "h1:12-14,17,;10=2,");
        part.settle(10);
        part.settle(11);
        assert_eq!(part.next, 15, "contiguous settlements move the commit");
        let (settled, delivered) = Part::parse_metadata(&part.metadata(&[(15, 3)]));
        assert_eq!(settled, BTreeSet::from([17]));
        assert_eq!(delivered, HashMap::from([(15, 3)]));
        assert!(part.is_settled(3) && part.is_settled(17) && !part.is_settled(15));
        assert!(Part::parse_metadata("someone else's").0.is_empty());
        assert!(Part::parse_metadata("h1:5-x,9-2,").0.is_empty());
        assert_eq!(Part::parse_metadata("h1:12,").0, BTreeSet::from([12]));
    }

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(regex_of("local", "orders.*"), "^local\\.orders\\.[^.]+$");
        assert_eq!(regex_of("prod-1", "a.>"), "^prod\\-1\\.a\\..+$");
        assert_eq!(regex_of("local", "a_b.c-d"), "^local\\.a_b\\.c\\-d$");
    }
}

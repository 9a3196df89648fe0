//! The seam between the bus and a backend.
//!
//! Owns the two traits a store implements and the [`Features`] it declares:
//! [`Transport`], the data path — publish a batch, open a subscription, read
//! a topic's last `seq`, close — and [`Inspect`], what tools read — list
//! topics and groups, replay a topic, list and purge dead letters, report an
//! event's delivery state for a group. Stores write them as `async fn`s;
//! [`DynTransport`] is the one boxing adapter the bus holds them through.
//! Settling travels through
//! each [`Delivery`](crate::Delivery)'s [`Settle`](crate::model::delivery::Settle).
//! Everything users touch (typed events, commands, correlation, size limits)
//! lives once above it, in the `Bus`, so every backend gets it for free.
//!
//! Backends and the DESIGN.md §4 semantics each passes in the conformance suite
//! (`herald-conformance`):
//!
//! | backend | crate | 1 batch | 2 order | 3 fan-out | 4 groups | 5 durable | 6 redelivery | 7 dedupe | 8 backpressure | 11 replay | 12 dead letters | 13 priority |
//! |---|---|---|---|---|---|---|---|---|---|---|---|---|
//! | memory | `herald` | atomic | yes | yes | yes | no (in-process) | nack, drop, ack wait | yes | yes | retained history | in memory | yes |
//! | SQLite | `herald-sqlite` | atomic | yes | yes | yes, across processes | yes | nack, drop, ack wait | yes | yes | whole log | durable | yes |
//! | PostgreSQL | `herald-postgres` | atomic | yes | yes | yes, across processes | yes | nack, drop, ack wait | yes | yes | whole log | durable | yes |
//! | NATS JetStream | `herald-nats` | per event (no multi-message commit) | yes | yes | yes, through the group's leader | yes | nack, drop, ack wait | within the duplicate window | yes | what the streams keep | durable | yes |
//! | Kafka | `herald-kafka` | per event | per partition (per topic on one-partition topics) | yes | yes: partitions across processes, a local queue within one | yes (exact resume where the brokers keep commit metadata) | nack, drop, ack wait | within the publishing process's window; across processes the consumer-side dedupe layer | yes | what the topics keep | durable topic | yes |
//!
//! Invariant: a transport receives envelopes that the bus has already
//! validated (topic, fields, size limits); it assigns `seq` and nothing else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::dedupe::DedupeStore;
use crate::backend::schemas::SchemaStore;
use crate::backend::subscription::{StartPosition, SubscribeSpec, Subscription};
use crate::model::dead_letter::{DeadLetter, DeadLetterFilter};
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::topic::Topic;
use crate::observe::metrics::Metrics;

/// What a transport can do; the conformance suite runs the scenarios a
/// transport claims and states why it skips the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Events and offsets survive a restart of the process.
    pub durable: bool,
    /// Events published before a subscription opened can be read
    /// ([`StartPosition::Earliest`], `Seq`, `Time`).
    pub retains_history: bool,
    /// Priority reorders waiting events.
    pub priority: bool,
    /// A durable group restarted resumes exactly where it stood: events
    /// settled after one still held stay settled, and a delivery in flight
    /// at the restart comes back with its attempt counted. (Kafka keeps
    /// this in commit metadata, which some Kafka-protocol brokers drop.)
    pub exact_resume: bool,
    /// The store keeps schema subjects ([`Transport::schemas`]), so a
    /// publish is checked against them.
    pub contracts: bool,
}

impl Features {
    /// The in-memory transport's features.
    pub const MEMORY: Features = Features {
        durable: false,
        retains_history: true,
        priority: true,
        exact_resume: false,
        contracts: true,
    };

    /// Features with every flag off; set the ones a transport has.
    pub const fn none() -> Self {
        Features {
            durable: false,
            retains_history: false,
            priority: false,
            exact_resume: false,
            contracts: false,
        }
    }
}

/// Where one event stands for one consumer group (DESIGN.md §4.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet delivered to the group (or waiting to be redelivered).
    Pending,
    /// Delivered to a member and not settled yet.
    InFlight {
        /// The delivery attempt, from 1.
        attempt: u32,
    },
    /// Settled: acked (events before the group started count as acked).
    Acked,
    /// Given up: in the dead letters for this group.
    DeadLettered,
}

/// One topic a store holds (see [`Transport::topics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic.
    pub topic: Topic,
    /// Its highest `seq` (on a partitioned store: of its fullest partition).
    pub last_seq: u64,
    /// Its partitions: 1 unless the store partitions topics (Kafka).
    pub partitions: u32,
}

impl TopicInfo {
    /// `topic` at `last_seq`, in one partition.
    pub fn new(topic: Topic, last_seq: u64) -> Self {
        TopicInfo {
            topic,
            last_seq,
            partitions: 1,
        }
    }

    /// The same, in `n` partitions.
    pub fn with_partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }
}

/// Where a consumer group stands on one partition of a topic (stores that
/// partition topics: Kafka). Offsets count from 1, like `seq` on Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStanding {
    /// The partition.
    pub partition: u32,
    /// Every event of the partition with `seq` at or below this is settled
    /// (the group's committed offset).
    pub acked_through: u64,
    /// The partition's highest `seq` (its high watermark).
    pub last_seq: u64,
    /// Events of the partition past the committed offset.
    pub lag: u64,
}

impl PartitionStanding {
    /// A group's standing on `partition`.
    pub fn new(partition: u32, acked_through: u64, last_seq: u64) -> Self {
        PartitionStanding {
            partition,
            acked_through,
            last_seq,
            lag: last_seq.saturating_sub(acked_through),
        }
    }
}

/// Where a consumer group stands on one topic it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupTopic {
    /// The topic.
    pub topic: Topic,
    /// The group's offset: every event of the topic with `seq` at or below
    /// it is settled (acked or dead-lettered) for the group; events before
    /// the group's start position count as settled.
    pub acked_through: u64,
    /// The topic's highest `seq`.
    pub last_seq: u64,
    /// Events of the topic the group has not settled yet (waiting, or in
    /// flight): its lag.
    pub lag: u64,
    /// Per partition, on stores that partition topics (else empty).
    pub partitions: Vec<PartitionStanding>,
}

impl GroupTopic {
    /// A group's standing on `topic`.
    pub fn new(topic: Topic, acked_through: u64, last_seq: u64, lag: u64) -> Self {
        GroupTopic {
            topic,
            acked_through,
            last_seq,
            lag,
            partitions: Vec::new(),
        }
    }

    /// The same, with its standing per partition.
    pub fn with_partitions(mut self, partitions: Vec<PartitionStanding>) -> Self {
        self.partitions = partitions;
        self
    }
}

/// One durable consumer group (see [`Transport::groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// The topic patterns it follows.
    pub patterns: Vec<String>,
    /// Each topic it follows that has events, by name.
    pub topics: Vec<GroupTopic>,
}

impl GroupInfo {
    /// Group `name` following `patterns`, standing as `topics` says.
    pub fn new(name: impl Into<String>, patterns: Vec<String>, topics: Vec<GroupTopic>) -> Self {
        GroupInfo {
            name: name.into(),
            patterns,
            topics,
        }
    }

    /// Events the group has not settled, over all its topics.
    pub fn lag(&self) -> u64 {
        self.topics.iter().map(|t| t.lag).sum()
    }
}

/// The most events one replay page holds, on every store: `Bus::replay`
/// asks a store for at most this many (a larger `limit` reads this many;
/// page on from the last).
pub const MAX_REPLAY_PAGE: usize = 10_000;

/// Runs this process's handler of a command for a caller in another
/// process: the command in, its response (or the handler's error) out.
pub type CommandServe = Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<Envelope>> + Send + Sync>;

/// Keeps a command handler reachable from other processes; dropping it
/// withdraws the handler from them.
pub type CommandExport = Box<dyn Send + Sync>;

/// A backend's data path: where events are appended and from where they
/// are delivered. Its inspection is [`Inspect`]; a `Bus` takes anything
/// that is both.
///
/// Implementations must give, for each topic: `seq` from 1, gap-free and
/// strictly increasing; subscribers see a topic's events in `seq` order; a
/// batch is appended atomically where the store allows.
///
/// Methods are plain `async fn`s for a store to write (`impl Future + Send`
/// in the trait); [`DynTransport`] boxes them, once, for the bus.
pub trait Transport: Send + Sync + 'static {
    /// Append `batch` (validated envelopes with `seq` unset) and return each
    /// one's `seq`, in order. A duplicate `idempotency_key` within the dedupe
    /// window is not appended again: its original `seq` is returned.
    fn publish(&self, batch: Vec<Envelope>) -> impl Future<Output = Result<Vec<u64>>> + Send;

    /// Open a subscription.
    fn subscribe(&self, spec: SubscribeSpec) -> impl Future<Output = Result<Subscription>> + Send;

    /// The highest `seq` appended to `topic`, `None` before its first event.
    fn last_seq(&self, topic: &Topic) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Stop: later publishes fail with `UNAVAILABLE`, open subscriptions end.
    /// Idempotent.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// What this transport can do.
    fn features(&self) -> Features;

    /// Make this process's handler of command `topic` callable from other
    /// processes, through `serve`, until the returned export drops. The
    /// default — a transport within one process — returns `None`.
    fn export_command(&self, topic: &Topic, serve: CommandServe) -> Option<CommandExport> {
        let _ = (topic, serve);
        None
    }

    /// Call the handler of `command` in another process, waiting up to
    /// `timeout`: its response, or `NOT_FOUND` when no process handles the
    /// topic, `TIMEOUT`, or the handler's error. `None` (the default) when
    /// calls do not leave the process.
    fn call(
        &self,
        command: Envelope,
        timeout: Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        let _ = (command, timeout);
        None
    }

    /// Record this transport's own metrics (Kafka's consumer lag per
    /// partition, say) in `metrics`: called with the registry of each bus
    /// built on it with instrumentation on. The default records nothing.
    fn attach_metrics(&self, metrics: &Metrics) {
        let _ = metrics;
    }

    /// Where a handler's [`Dedupe`](crate::dedupe::Dedupe) layer keeps the
    /// ids each group processed, for `window`, in this store, so they
    /// survive a restart ([`Dedupe::in_store`](crate::dedupe::Dedupe::in_store)).
    /// The default: `UNAVAILABLE`, the store keeps none.
    fn processed_ids(&self, window: Duration) -> Result<Arc<dyn DedupeStore>> {
        let _ = window;
        unsupported("keep processed ids").into_inner()
    }

    /// The store's schema registry ([`Bus::schemas`](crate::Bus::schemas)),
    /// kept where its events are. The default: `UNAVAILABLE`, the store
    /// keeps none (and a publish checks nothing).
    fn schemas(&self) -> Result<Arc<dyn SchemaStore>> {
        unsupported("keep schemas").into_inner()
    }
}

/// A backend's inspection: what operators and tools read about it without
/// touching any group. Each method defaults to `UNAVAILABLE` ("this store
/// cannot …"), so a store implements what it supports and the rest says so;
/// every store in this workspace implements all of them.
pub trait Inspect: Send + Sync + 'static {
    /// Every topic with events, by name, with its last `seq`.
    fn topics(&self) -> impl Future<Output = Result<Vec<TopicInfo>>> + Send {
        unsupported("list topics")
    }

    /// Up to `limit` retained events of `topic` from `from` on, in `seq`
    /// order, without touching any group; page on with
    /// `StartPosition::Seq(last + 1)`. `Latest` reads nothing. The bus
    /// never asks for more than [`MAX_REPLAY_PAGE`].
    fn replay(
        &self,
        topic: &Topic,
        from: StartPosition,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Envelope>>> + Send {
        let _ = (topic, from, limit);
        unsupported("replay")
    }

    /// Every durable consumer group, by name, with where it stands on each
    /// topic it follows.
    fn groups(&self) -> impl Future<Output = Result<Vec<GroupInfo>>> + Send {
        unsupported("list groups")
    }

    /// The dead letters `filter` selects, oldest first.
    fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send {
        let _ = filter;
        unsupported("list dead letters")
    }

    /// Delete the dead letters `filter` selects; returns how many.
    fn purge_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> impl Future<Output = Result<u64>> + Send {
        let _ = filter;
        unsupported("purge dead letters")
    }

    /// Where the event `seq` of `topic` stands for consumer group `group`
    /// (`NOT_FOUND` for an unknown event or group).
    fn delivery_state(
        &self,
        topic: &Topic,
        seq: u64,
        group: &str,
    ) -> impl Future<Output = Result<DeliveryState>> + Send {
        let _ = (topic, seq, group);
        unsupported("report delivery state")
    }
}

fn unsupported<T>(what: &str) -> std::future::Ready<Result<T>> {
    std::future::ready(Err(Error::new(
        ErrorCode::Unavailable,
        format!("this store cannot {what}"),
    )))
}

/// The object-safe form of a store ([`Transport`] + [`Inspect`]): what a
/// `Bus` holds, and what a store chosen at run time is passed around as
/// (`Arc<dyn DynTransport>`). Every `Transport + Inspect` is one; its
/// futures are boxed here, once, instead of in every store.
pub trait DynTransport: Send + Sync + 'static {
    /// [`Transport::publish`], boxed.
    fn publish(&self, batch: Vec<Envelope>) -> BoxFuture<'_, Result<Vec<u64>>>;
    /// [`Transport::subscribe`], boxed.
    fn subscribe(&self, spec: SubscribeSpec) -> BoxFuture<'_, Result<Subscription>>;
    /// [`Transport::last_seq`], boxed.
    fn last_seq<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<u64>>>;
    /// [`Transport::close`], boxed.
    fn close(&self) -> BoxFuture<'_, Result<()>>;
    /// [`Transport::features`].
    fn features(&self) -> Features;
    /// [`Transport::export_command`].
    fn export_command(&self, topic: &Topic, serve: CommandServe) -> Option<CommandExport>;
    /// [`Transport::call`].
    fn call(
        &self,
        command: Envelope,
        timeout: Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>>;
    /// [`Transport::attach_metrics`].
    fn attach_metrics(&self, metrics: &Metrics);
    /// [`Transport::processed_ids`].
    fn processed_ids(&self, window: Duration) -> Result<Arc<dyn DedupeStore>>;
    /// See [`Transport::schemas`].
    fn schemas(&self) -> Result<Arc<dyn SchemaStore>>;
    /// [`Inspect::topics`], boxed.
    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>>;
    /// [`Inspect::replay`], boxed.
    fn replay<'a>(
        &'a self,
        topic: &'a Topic,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>>;
    /// [`Inspect::groups`], boxed.
    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>>>;
    /// [`Inspect::dead_letters`], boxed.
    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>>>;
    /// [`Inspect::purge_dead_letters`], boxed.
    fn purge_dead_letters<'a>(&'a self, filter: &'a DeadLetterFilter)
        -> BoxFuture<'a, Result<u64>>;
    /// [`Inspect::delivery_state`], boxed.
    fn delivery_state<'a>(
        &'a self,
        topic: &'a Topic,
        seq: u64,
        group: &'a str,
    ) -> BoxFuture<'a, Result<DeliveryState>>;
}

impl<T: Transport + Inspect> DynTransport for T {
    fn publish(&self, batch: Vec<Envelope>) -> BoxFuture<'_, Result<Vec<u64>>> {
        Box::pin(Transport::publish(self, batch))
    }
    fn subscribe(&self, spec: SubscribeSpec) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(Transport::subscribe(self, spec))
    }
    fn last_seq<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(Transport::last_seq(self, topic))
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Transport::close(self))
    }
    fn features(&self) -> Features {
        Transport::features(self)
    }
    fn export_command(&self, topic: &Topic, serve: CommandServe) -> Option<CommandExport> {
        Transport::export_command(self, topic, serve)
    }
    fn call(
        &self,
        command: Envelope,
        timeout: Duration,
    ) -> Option<BoxFuture<'static, Result<Envelope>>> {
        Transport::call(self, command, timeout)
    }
    fn attach_metrics(&self, metrics: &Metrics) {
        Transport::attach_metrics(self, metrics)
    }
    fn processed_ids(&self, window: Duration) -> Result<Arc<dyn DedupeStore>> {
        Transport::processed_ids(self, window)
    }
    fn schemas(&self) -> Result<Arc<dyn SchemaStore>> {
        Transport::schemas(self)
    }
    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        Box::pin(Inspect::topics(self))
    }
    fn replay<'a>(
        &'a self,
        topic: &'a Topic,
        from: StartPosition,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Envelope>>> {
        Box::pin(Inspect::replay(self, topic, from, limit))
    }
    fn groups(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>>> {
        Box::pin(Inspect::groups(self))
    }
    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>>> {
        Box::pin(Inspect::dead_letters(self, filter))
    }
    fn purge_dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(Inspect::purge_dead_letters(self, filter))
    }
    fn delivery_state<'a>(
        &'a self,
        topic: &'a Topic,
        seq: u64,
        group: &'a str,
    ) -> BoxFuture<'a, Result<DeliveryState>> {
        Box::pin(Inspect::delivery_state(self, topic, seq, group))
    }
}

/// What `Bus::new` and `BusBuilder::transport` take: a store
/// (`Transport + Inspect`), a shared one (`Arc<S>`), or one chosen at run
/// time (by `HERALD_STORE`, say) as `Arc<dyn DynTransport>`; a shared store
/// is not wrapped again.
pub trait IntoTransport {
    /// This store as the bus holds it.
    fn into_shared(self) -> Arc<dyn DynTransport>;
}

impl<T: Transport + Inspect> IntoTransport for T {
    fn into_shared(self) -> Arc<dyn DynTransport> {
        Arc::new(self)
    }
}

impl<T: Transport + Inspect> IntoTransport for Arc<T> {
    fn into_shared(self) -> Arc<dyn DynTransport> {
        self
    }
}

impl IntoTransport for Arc<dyn DynTransport> {
    fn into_shared(self) -> Arc<dyn DynTransport> {
        self
    }
}

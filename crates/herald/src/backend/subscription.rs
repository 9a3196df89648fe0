//! Subscriptions: what a subscriber asks for and the stream it gets.
//!
//! Owns [`SubscribeSpec`] (patterns, group, start position, buffer, kinds,
//! a group's [`GroupOrdering`] — what a transport needs to open a
//! subscription), [`Subscription`] (a
//! `Stream` of [`Delivery`]s with an idempotent close that works while another
//! task is blocked in `next`), and [`TypedSubscription`] (decoded typed events
//! with composable filters). The `Bus` builds specs from its builder; each
//! transport turns a spec into a `Subscription`.
//!
//! Contract every transport keeps:
//! - Per topic, deliveries come in `seq` order without gaps (a redelivery may
//!   repeat an earlier `seq`, with a higher `attempt`).
//! - Capacity: at most `buffer` undelivered events wait for a subscription;
//!   when it is full, publishers to the topics it follows wait for room (up to
//!   the publish timeout, then `BACKPRESSURE`); nothing is dropped, and
//!   publishers to other topics are not slowed.
//! - Close: after [`Subscription::close`] (from any task, any number of times)
//!   the stream yields `None`; events still buffered for a group-less
//!   subscription are dropped with it; a group member's in-flight events go
//!   back to the group.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;

use crate::config::{
    DEFAULT_ACK_WAIT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_SUBSCRIPTION_BUFFER, MAX_IN_FLIGHT_RANGE,
};
use crate::model::dead_letter::FailureSource;
use crate::model::delivery::{Delivery, Detached, Outcome};
use crate::model::envelope::Kind;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::event::Event;
pub use crate::model::start::StartPosition;
use crate::model::topic::Pattern;
use crate::observe::health::Member;

/// Which kinds a subscription receives; commands and responses are not topic
/// traffic, so the default is events and intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindFilter(u8);

impl KindFilter {
    /// Events and intents.
    pub const DEFAULT: KindFilter = KindFilter(0b1001);
    /// Every kind.
    pub const ALL: KindFilter = KindFilter(0b1111);

    fn bit(kind: Kind) -> u8 {
        match kind {
            Kind::Event => 1,
            Kind::Command => 2,
            Kind::Response => 4,
            Kind::Intent => 8,
        }
    }

    /// Exactly these kinds.
    pub fn only(kinds: impl IntoIterator<Item = Kind>) -> Self {
        KindFilter(kinds.into_iter().fold(0, |acc, k| acc | Self::bit(k)))
    }

    /// Whether `kind` passes.
    pub fn allows(self, kind: Kind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

impl Default for KindFilter {
    fn default() -> Self {
        KindFilter::DEFAULT
    }
}

/// Which events of a consumer group are handled one at a time, in order
/// (the group hands such a flow's next event out only once the one before
/// it is settled), while the rest run concurrently across its members.
///
/// - [`PerKey`](Self::PerKey) (the default): events of one topic and
///   `key` are in order; keyless events run concurrently.
/// - [`PerTopic`](Self::PerTopic): keyless events of one topic are in
///   order too, as one flow of that topic ("sequential per session,
///   concurrent across sessions" when each session is a topic, such as
///   `chat.session.<id>`); keyed events stay in order per key.
///
/// A group keeps the ordering its first member chose: a member asking for
/// the other is refused with `VALIDATION`. A subscription without a group
/// has one consumer that gets each topic in `seq` order anyway, so the
/// ordering changes nothing for it. On NATS and Kafka a topic with more
/// than one partition spreads keyless events over its partitions unless
/// its publishers place them by topic
/// ([`KeylessPartition::Topic`](crate::config::KeylessPartition),
/// `HERALD_KEYLESS_PARTITION=topic`); a `PerTopic` group is refused there
/// otherwise.
///
/// ```
/// use herald::{Bus, GroupOrdering};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::memory();
/// let sessions = bus
///     .subscribe_raw("chat.session.*")
///     .group("transcripts")
///     .ordering(GroupOrdering::PerTopic)
///     .await?;
/// # drop(sessions);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GroupOrdering {
    /// Events of one topic and key in order; keyless events concurrent.
    #[default]
    PerKey,
    /// Keyless events of one topic in order too; topics concurrent.
    PerTopic,
}

impl GroupOrdering {
    /// How configuration and the gateway spell it: `per_key`, `per_topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupOrdering::PerKey => "per_key",
            GroupOrdering::PerTopic => "per_topic",
        }
    }

    /// The ordering spelled `text` (as [`as_str`](Self::as_str) gives it).
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "per_key" => Ok(GroupOrdering::PerKey),
            "per_topic" => Ok(GroupOrdering::PerTopic),
            other => Err(Error::validation(format!(
                "unknown group ordering {other:?}: per_key or per_topic"
            ))),
        }
    }

    /// The key that orders an event of this key within its topic: `None`
    /// for an event that is in no flow (keyless, per key), the empty key
    /// for the one flow of a topic's keyless events (per topic).
    pub fn flow_key(self, key: Option<&str>) -> Option<&str> {
        match (self, key) {
            (_, Some(k)) => Some(k),
            (GroupOrdering::PerTopic, None) => Some(""),
            (GroupOrdering::PerKey, None) => None,
        }
    }
}

/// What a transport needs to open a subscription. Built by
/// [`Bus::subscribe_raw`](crate::Bus::subscribe_raw) and friends.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeSpec {
    /// Topics to follow (any match).
    pub patterns: Vec<Pattern>,
    /// Consumer group; `None` for a group-less (fan-out) subscription.
    pub group: Option<String>,
    /// Where to start.
    pub start: StartPosition,
    /// Undelivered events buffered before publishers wait.
    pub buffer: usize,
    /// Kinds delivered.
    pub kinds: KindFilter,
    /// A delivery neither acked, nacked nor termed within this time is
    /// redelivered with `attempt + 1` (or dead-lettered at `max_deliver`).
    pub ack_wait: std::time::Duration,
    /// Group members: the most deliveries held at once, claimed and not
    /// yet settled (what one claim may lease, and the prefetch). Group-less
    /// subscriptions have `buffer` instead.
    pub max_in_flight: usize,
    /// This group's delivery attempts before an event is dead-lettered;
    /// `None` keeps the store's (`HERALD_MAX_DELIVER`). See
    /// [`max_deliver_or`](Self::max_deliver_or).
    pub max_deliver: Option<u32>,
    /// Which of a group's events are handled in order.
    pub ordering: GroupOrdering,
}

impl SubscribeSpec {
    /// A group-less spec for `patterns`, starting at the latest event.
    pub fn new(patterns: Vec<Pattern>) -> Self {
        SubscribeSpec {
            patterns,
            group: None,
            start: StartPosition::Latest,
            buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            kinds: KindFilter::DEFAULT,
            ack_wait: DEFAULT_ACK_WAIT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_deliver: None,
            ordering: GroupOrdering::PerKey,
        }
    }

    /// The attempts this subscription's events get before they are
    /// dead-lettered: its own `max_deliver`, else `store_default`.
    pub fn max_deliver_or(&self, store_default: u32) -> u32 {
        self.max_deliver.unwrap_or(store_default)
    }

    /// Whether `env` is one of a flow the group hands out one event at a
    /// time ([`GroupOrdering::flow_key`]); never for a group-less
    /// subscription.
    pub fn orders(&self, env: &crate::Envelope) -> bool {
        self.group.is_some() && self.ordering.flow_key(env.key()).is_some()
    }

    /// Whether an event on `topic` of `kind` is for this subscription.
    pub fn wants(&self, topic: &str, kind: Kind) -> bool {
        self.kinds.allows(kind) && self.patterns.iter().any(|p| p.matches_str(topic))
    }

    /// What every transport refuses: no pattern, a start `seq` of 0, a
    /// buffer outside 1–1,000,000, `max_in_flight` outside 1–10,000,
    /// `max_deliver` outside 1–1,000.
    pub fn validate(&self) -> Result<()> {
        if self.patterns.is_empty() {
            return Err(Error::validation(
                "a subscription needs at least one pattern",
            ));
        }
        if self.start == StartPosition::Seq(0) {
            return Err(Error::validation("start seq must be at least 1"));
        }
        crate::config::in_range("subscription buffer", self.buffer, 1, 1_000_000)?;
        if let Some(n) = self.max_deliver {
            let (low, high) = crate::config::delivery::MAX_DELIVER_RANGE;
            crate::config::in_range("max_deliver", n, low, high)?;
        }
        let (low, high) = MAX_IN_FLIGHT_RANGE;
        crate::config::in_range("max_in_flight", self.max_in_flight, low, high)
    }
}

/// Stops a subscription; clones share it. Closing is idempotent and wakes a
/// task blocked in `next`.
///
/// ```
/// use futures_util::StreamExt;
/// use herald::{Bus, CloseHandle};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::memory();
/// let mut sub = bus.subscribe_raw("orders.*").await?;
/// let close: CloseHandle = sub.close_handle();
/// let reader = tokio::spawn(async move { sub.next().await.is_none() });
/// close.close();
/// assert!(reader.await.unwrap(), "the stream ends once closed");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CloseHandle(Arc<dyn Fn() + Send + Sync>);

impl CloseHandle {
    /// A handle that runs `close` (it must be idempotent).
    pub fn new(close: impl Fn() + Send + Sync + 'static) -> Self {
        CloseHandle(Arc::new(close))
    }

    /// Close the subscription.
    pub fn close(&self) {
        (self.0)()
    }
}

impl fmt::Debug for CloseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CloseHandle")
    }
}

/// A stream of deliveries for one subscriber.
///
/// ```
/// use futures_util::StreamExt;
/// use herald::{Bus, Message, Payload};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::memory();
/// let mut sub = bus.subscribe_raw("orders.*").await?;
/// bus.publish(Message::new("orders.placed", Payload::null())).await?;
/// let d = sub.next().await.unwrap()?;
/// assert_eq!(d.seq(), Some(1));
/// d.ack().await?;
/// sub.close();
/// assert!(sub.next().await.is_none());
/// # Ok(()) }
/// ```
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>,
    close: CloseHandle,
    instruments: Option<Arc<crate::observe::instrument::Instruments>>,
    /// Its bus's count of background settlements, given to each delivery.
    detached: Option<Arc<Detached>>,
    /// Kept while the subscription lives and dropped with it: its entry
    /// among its bus's open subscriptions.
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Its entry in its bus's consumer health, when it is a group member.
    member: Option<Arc<Member>>,
}

impl Subscription {
    /// Wrap a transport's stream and its close action.
    pub fn new(
        stream: impl Stream<Item = Result<Delivery>> + Send + 'static,
        close: CloseHandle,
    ) -> Self {
        Subscription {
            inner: Box::pin(stream),
            close,
            instruments: None,
            detached: None,
            guard: None,
            member: None,
        }
    }

    /// Report what it asks for and holds to `member` (consumer health).
    pub(crate) fn watched(mut self, member: Arc<Member>) -> Self {
        self.member = Some(member);
        self
    }

    /// Its entry in its bus's consumer health, when it is a group member.
    pub(crate) fn member(&self) -> Option<&Arc<Member>> {
        self.member.as_ref()
    }

    /// Count the background settlements of its deliveries in `detached`
    /// (its bus's).
    pub(crate) fn tracked(mut self, detached: Arc<Detached>) -> Self {
        self.detached = Some(detached);
        self
    }

    /// Listed among its bus's open subscriptions until dropped.
    pub(crate) fn registered(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Record each delivery's fan-out latency in `instruments`.
    pub(crate) fn instrumented(
        mut self,
        instruments: Arc<crate::observe::instrument::Instruments>,
    ) -> Self {
        self.instruments = Some(instruments);
        self
    }

    /// Close: the stream ends. Idempotent.
    pub fn close(&self) {
        self.close.close()
    }

    /// A handle that closes this subscription from another task.
    pub fn close_handle(&self) -> CloseHandle {
        self.close.clone()
    }

    /// Decode deliveries as the typed event `E`.
    pub fn typed<E: Event>(self) -> TypedSubscription<E> {
        TypedSubscription {
            inner: self,
            filters: Vec::new(),
            _event: PhantomData,
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(member) = &self.member {
            member.polled();
        }
        let mut next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(d))) = &mut next {
            if let Some(member) = &self.member {
                d.hold(member.took());
            }
            if let Some(i) = &self.instruments {
                i.received(d.shared_envelope());
            }
            if let Some(detached) = &self.detached {
                d.track(detached);
            }
        }
        next
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close.close();
        // The stream goes now, so what it hands back counts with its bus.
        if let Some(detached) = self.detached.take() {
            let stream =
                std::mem::replace(&mut self.inner, Box::pin(futures_util::stream::empty()));
            detached.while_dropping(|| drop(stream));
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// A typed event received with its delivery; derefs to the event.
#[derive(Debug)]
pub struct Received<E> {
    event: E,
    delivery: Delivery,
}

impl<E> Received<E> {
    /// The decoded event.
    pub fn event(&self) -> &E {
        &self.event
    }
    /// The delivery (envelope, settle).
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    /// Split into the event and its delivery.
    pub fn into_parts(self) -> (E, Delivery) {
        (self.event, self.delivery)
    }
    /// Acknowledge.
    pub async fn ack(self) -> Result<()> {
        self.delivery.ack().await
    }
    /// Negative-acknowledge (redeliver).
    pub async fn nack(self) -> Result<()> {
        self.delivery.nack().await
    }
}

impl<E> std::ops::Deref for Received<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

pub(crate) type Filter<E> = Box<dyn Fn(&E) -> bool + Send + Sync>;

/// A stream of typed events of `E`, narrowed by filters.
///
/// Events that a filter rejects are acked and skipped. A payload that does not
/// decode into `E` is dead-lettered (code `VALIDATION`) and yielded as an
/// `Err`, so one bad producer never stalls the stream.
pub struct TypedSubscription<E> {
    inner: Subscription,
    filters: Vec<Filter<E>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> TypedSubscription<E> {
    /// Keep only events for which `keep` is true; filters compose (all must pass).
    pub fn filter(mut self, keep: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.filters.push(Box::new(keep));
        self
    }

    /// Close: the stream ends. Idempotent.
    pub fn close(&self) {
        self.inner.close()
    }

    /// A handle that closes this subscription from another task.
    pub fn close_handle(&self) -> CloseHandle {
        self.inner.close_handle()
    }
}

impl<E: Event> Stream for TypedSubscription<E> {
    type Item = Result<Received<E>>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let delivery = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(d))) => d,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match E::from_envelope(delivery.envelope()) {
                Ok(event) => {
                    if self.filters.iter().all(|f| f(&event)) {
                        return Poll::Ready(Some(Ok(Received { event, delivery })));
                    }
                    delivery.settle_detached(Outcome::Ack);
                }
                Err(err) => {
                    delivery.settle_detached(Outcome::Term {
                        code: ErrorCode::Validation,
                        reason: err.message().to_string(),
                        source: FailureSource::Decode,
                    });
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

impl<E> fmt::Debug for TypedSubscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSubscription")
            .field("event", &std::any::type_name::<E>())
            .field("filters", &self.filters.len())
            .finish()
    }
}

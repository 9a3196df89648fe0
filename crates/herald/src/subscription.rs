//! Subscriptions: what a subscriber asks for and the stream it gets.
//!
//! Owns [`SubscribeSpec`] (patterns, group, start position, buffer, kinds —
//! what a transport needs to open a subscription), [`Subscription`] (a
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

use chrono::{DateTime, Utc};
use futures_core::Stream;

use crate::delivery::{Delivery, Outcome};
use crate::envelope::{Envelope, Kind};
use crate::error::{Error, ErrorCode, Result};
use crate::event::Event;
use crate::topic::Pattern;

/// Default number of undelivered events a subscription buffers.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;

/// How long a delivery may stay unsettled before it is redelivered
/// (`HERALD_ACK_WAIT`).
pub const DEFAULT_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a new subscription (or a new durable group) starts reading. A
/// durable group's start is fixed when the group is made, and kept across
/// closes and restarts (DESIGN.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// From the oldest event the transport retains.
    Earliest,
    /// Only events published after the subscription opens (the default);
    /// for a durable group, every event published after the group was made,
    /// those published while it had no member too.
    #[default]
    Latest,
    /// From this `seq` in each matching topic.
    Seq(u64),
    /// From the first event created at or after this time, compared at the
    /// millisecond precision of UUID v7 ids.
    Time(DateTime<Utc>),
}

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
        }
    }

    /// Whether an event on `topic` of `kind` is for this subscription.
    pub fn wants(&self, topic: &str, kind: Kind) -> bool {
        self.kinds.allows(kind) && self.patterns.iter().any(|p| p.matches_str(topic))
    }

    /// What every transport refuses: no pattern, a start `seq` of 0, a
    /// buffer outside 1–1,000,000.
    pub fn validate(&self) -> Result<()> {
        if self.patterns.is_empty() {
            return Err(Error::validation(
                "a subscription needs at least one pattern",
            ));
        }
        if self.start == StartPosition::Seq(0) {
            return Err(Error::validation("start seq must be at least 1"));
        }
        crate::config::in_range("subscription buffer", self.buffer, 1, 1_000_000)
    }
}

impl StartPosition {
    /// Whether a subscription starting here delivers `envelope` (`Latest`
    /// and `Earliest` admit everything they read; where reading begins is
    /// the transport's business).
    pub fn admits(&self, envelope: &Envelope) -> bool {
        match self {
            StartPosition::Seq(n) => envelope.seq().is_some_and(|s| s >= *n),
            StartPosition::Time(t) => {
                envelope.timestamp().timestamp_millis() >= t.timestamp_millis()
            }
            StartPosition::Earliest | StartPosition::Latest => true,
        }
    }
}

/// Stops a subscription; clones share it. Closing is idempotent and wakes a
/// task blocked in `next`.
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
    instruments: Option<Arc<crate::instrument::Instruments>>,
    /// Its entry among its bus's open subscriptions.
    registration: Option<crate::lifecycle::Registration>,
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
            registration: None,
        }
    }

    /// Listed among its bus's open subscriptions until dropped.
    pub(crate) fn registered(mut self, registration: crate::lifecycle::Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    /// Record each delivery's fan-out latency in `instruments`.
    pub(crate) fn instrumented(mut self, instruments: Arc<crate::instrument::Instruments>) -> Self {
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
        let next = self.inner.as_mut().poll_next(cx);
        if let (Poll::Ready(Some(Ok(d))), Some(i)) = (&next, &self.instruments) {
            i.received(d.shared_envelope());
        }
        next
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close.close();
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

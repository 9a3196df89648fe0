//! The [`Bus`]: the one handle users hold.
//!
//! Owns everything that is the same on every backend: turning messages and
//! typed events into validated envelopes (source, ids, correlation from the
//! task's [`Context`](crate::context::Context), size limits), subscription
//! builders (raw and typed), and the command registry with its inline
//! dispatch (see [`command`]). It delegates appending,
//! sequencing and delivery to a [`Transport`].
//!
//! It does not run consume loops (that is [`handler`]) nor
//! batch or guard publishes (that is [`publisher`]).

pub mod command;
pub mod contracts;
pub mod dead_letters;
pub mod forward;
pub mod handler;
mod lifecycle;
pub mod publisher;
mod registry;

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use crate::backend::subscription::{
    Filter, GroupOrdering, KindFilter, StartPosition, SubscribeSpec, Subscription,
    TypedSubscription,
};
use crate::backend::transport::{
    DeliveryState, DynTransport, Features, GroupInfo, IntoTransport, TopicInfo, MAX_REPLAY_PAGE,
};
use crate::bus::lifecycle::Lifecycle;
use crate::bus::publisher::{Batching, Publisher};
use crate::bus::registry::Commands;
use crate::config::Config;
use crate::config::RetryPolicy;
use crate::memory::MemoryTransport;
use crate::model::delivery::{BoxFuture, Detached};
use crate::model::envelope::PublishedAt;
use crate::model::envelope::{Envelope, Limits};
use crate::model::error::{Error, Result};
use crate::model::event::{Event, EventSchema};
use crate::model::message::{Publish, Receipt};
use crate::model::topic::{Pattern, Topic};
use crate::observe::health::{Health, MemberHealth};
use crate::observe::instrument::Instruments;
use crate::observe::metrics::Metrics;
use crate::observe::trace::Propagator;
use crate::runtime::breaker::CircuitBreaker;
use crate::runtime::middleware::Layer;

const MIN_ACK_WAIT: Duration = Duration::from_millis(10);
/// How long [`Bus::close`] waits for detached settlements to land.
const CLOSE_SETTLE_WAIT: Duration = Duration::from_secs(5);
const MAX_ACK_WAIT: Duration = Duration::from_secs(3600);

/// The event bus: publish, subscribe, handle and call commands.
///
/// Cheap to clone; clones share one transport and one command registry.
///
/// ```
/// use futures_util::StreamExt;
/// use herald::{Bus, Message, Payload};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::memory();
/// let mut sub = bus.subscribe_raw("orders.>").await?;
/// let seqs = bus
///     .publish([
///         Message::json("orders.placed", &serde_json::json!({"id": 1}))?,
///         Message::json("orders.placed", &serde_json::json!({"id": 2}))?,
///     ])
///     .await?;
/// assert_eq!(seqs, [1, 2]);
/// let first = sub.next().await.unwrap()?;
/// assert_eq!(first.seq(), Some(1));
/// first.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn DynTransport>,
    pub(crate) config: Config,
    pub(crate) source: Arc<str>,
    pub(crate) limits: Limits,
    pub(crate) commands: Commands,
    pub(crate) publisher: Publisher,
    pub(crate) handlers: HandlerDefaults,
    pub(crate) metrics: Metrics,
    /// `None` when instrumentation is off.
    pub(crate) instruments: Option<Arc<Instruments>>,
    /// Its open subscriptions, and whether it is closed.
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Its deliveries' settlements running in background tasks.
    pub(crate) detached: Arc<Detached>,
    /// Its own trace propagator; `None` uses the process's.
    pub(crate) propagator: Option<Arc<dyn Propagator>>,
    /// Its group members' health.
    pub(crate) health: Health,
    /// What its publishes are checked against.
    pub(crate) contracts: Arc<contracts::Guard>,
}

impl Inner {
    /// The trace propagator this bus uses: its own, else the process's.
    pub(crate) fn propagator(&self) -> Option<&dyn Propagator> {
        match &self.propagator {
            Some(own) => Some(&**own),
            None => crate::observe::trace::process_propagator(),
        }
    }
}

/// What every handler of a bus gets unless it says otherwise.
#[derive(Default, Clone)]
pub(crate) struct HandlerDefaults {
    pub(crate) layers: Vec<Arc<dyn Layer>>,
    pub(crate) retry: Option<RetryPolicy>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("source", &self.inner.source)
            .field("features", &self.inner.transport.features())
            .finish()
    }
}

impl Bus {
    /// A bus on a fresh in-memory transport, configured as [`Bus::new`] is.
    pub fn memory() -> Bus {
        Bus::new(MemoryTransport::default())
    }

    /// A bus on `transport` with the [`Config`] the `HERALD_*` variables
    /// give ([`Config::from_env`]: the defaults where none is set). A value
    /// out of range is logged and the bus keeps every default instead;
    /// [`Bus::builder`]'s `build` refuses it with `VALIDATION`.
    pub fn new(transport: impl IntoTransport) -> Bus {
        let config = Config::from_env().unwrap_or_else(|e| {
            tracing::error!(
                error = %e,
                "HERALD_* settings refused: this bus keeps the defaults (Bus::builder().build() fails instead)"
            );
            Config::default()
        });
        Bus::from_parts(transport.into_shared(), config, BusBuilder::default())
    }

    /// Configure a bus: its [`Config`] and transport.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::{Bus, Config};
    /// let bus = Bus::builder()
    ///     .config(Config::default().source("billing").timeout(Duration::from_secs(5)))
    ///     .build()
    ///     .unwrap();
    /// # drop(bus);
    /// ```
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    fn from_parts(transport: Arc<dyn DynTransport>, config: Config, options: BusBuilder) -> Bus {
        let metrics = options.metrics.clone().unwrap_or_default();
        let stall_after = config.delivery_config().stall_after_duration();
        let contracts = contracts::Guard::new(config.delivery_config().schema_checks());
        let instruments = options
            .instrument
            .then(|| Instruments::new(metrics.clone()));
        if let (Some(breaker), true) = (&options.publish_breaker, options.instrument) {
            breaker.export(&metrics, "publish");
        }
        if options.instrument {
            transport.attach_metrics(&metrics);
        }
        let publisher = Publisher::new(
            transport.clone(),
            options.batching,
            options.publish_retry,
            options.publish_breaker,
        );
        Bus {
            inner: Arc::new(Inner {
                transport,
                source: Arc::from(config.effective_source()),
                limits: config.limits(),
                config,
                commands: Commands::default(),
                publisher,
                handlers: options.handlers,
                metrics,
                instruments,
                lifecycle: Lifecycle::new(),
                detached: Arc::default(),
                propagator: options.propagator,
                health: Health::new(stall_after),
                contracts,
            }),
        }
    }

    /// This bus's options on another transport (a wrapper of this one).
    pub(crate) fn with_transport(&self, transport: Arc<dyn DynTransport>) -> Bus {
        let i = &self.inner;
        Bus {
            inner: Arc::new(Inner {
                publisher: i.publisher.on(transport.clone()),
                transport,
                config: i.config.clone(),
                source: i.source.clone(),
                limits: i.limits,
                commands: Commands::default(),
                handlers: i.handlers.clone(),
                metrics: i.metrics.clone(),
                instruments: i.instruments.clone(),
                lifecycle: Lifecycle::new(),
                detached: Arc::default(),
                propagator: i.propagator.clone(),
                health: i.health.clone(),
                contracts: contracts::Guard::new(i.config.delivery_config().schema_checks()),
            }),
        }
    }

    /// Publish one message, typed event or envelope, or many (anything
    /// iterable), and return each one's `seq` in order.
    ///
    /// Everything is validated before anything is appended: a bad topic or
    /// field is `VALIDATION`, an oversized payload `BACKPRESSURE`, and then
    /// nothing of the batch is published. A batch is appended atomically.
    /// Published inside a handler (a correlation [`Context`](crate::model::context::Context)),
    /// messages inherit its `correlation_id` and get `causation_id` = the
    /// handled message's id. To learn each message's id too, use
    /// [`publish_receipts`](Bus::publish_receipts); to choose it,
    /// [`Message::id`](crate::Message::id).
    pub async fn publish<I>(&self, items: I) -> Result<Vec<u64>>
    where
        I: IntoIterator,
        I::Item: Publish,
    {
        self.publish_noting(items, false)
            .await
            .map(|(seqs, _)| seqs)
    }

    /// [`publish`](Bus::publish), answering each message's id beside its
    /// `seq`, in order (as `herald serve` answers a publish).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use futures_util::StreamExt;
    /// use herald::{Bus, Message};
    /// let bus = Bus::memory();
    /// let mut sub = bus.subscribe_raw("orders.placed").await?;
    /// let receipts = bus
    ///     .publish_receipts([Message::json("orders.placed", &1)?, Message::json("orders.placed", &2)?])
    ///     .await?;
    /// assert_eq!(receipts.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    /// assert_eq!(sub.next().await.unwrap()?.id(), receipts[0].id);
    /// # Ok(()) }
    /// ```
    pub async fn publish_receipts<I>(&self, items: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator,
        I::Item: Publish,
    {
        let (seqs, ids) = self.publish_noting(items, true).await?;
        Ok(ids
            .into_iter()
            .zip(seqs)
            .map(|(id, seq)| Receipt { id, seq })
            .collect())
    }

    /// Publish `items`; with `ids`, also answer their ids. A failure is
    /// counted by its code.
    async fn publish_noting<I>(&self, items: I, ids: bool) -> Result<(Vec<u64>, Vec<Uuid>)>
    where
        I: IntoIterator,
        I::Item: Publish,
    {
        let published = self.publish_counted(items, ids).await;
        if let (Err(e), Some(i)) = (&published, &self.inner.instruments) {
            i.publish_failed(e.code());
        }
        published
    }

    async fn publish_counted<I>(&self, items: I, ids: bool) -> Result<(Vec<u64>, Vec<Uuid>)>
    where
        I: IntoIterator,
        I::Item: Publish,
    {
        let _timer = self
            .inner
            .instruments
            .as_ref()
            .map(|i| i.publish.start_timer());
        let mut batch = self.prepare(items)?;
        self.check_contracts(&batch).await?;
        if self.inner.instruments.is_some() {
            let now = PublishedAt::now();
            for envelope in &mut batch {
                envelope.published_at = now;
            }
        }
        let ids = match ids {
            true => batch.iter().map(Envelope::id).collect(),
            false => Vec::new(),
        };
        let span = match batch.first() {
            Some(first) => tracing::debug_span!(
                "herald.publish",
                topic = %first.topic(),
                events = batch.len(),
                correlation_id = %first.correlation_id(),
                causation_id = first.causation_id().map(tracing::field::display),
                trace_id = crate::model::traceparent::TraceParent::of(first).map(|t| t.trace_id_hex()).as_deref(),
            ),
            None => tracing::Span::none(),
        };
        let seqs = self.append(batch).instrument(span).await?;
        Ok((seqs, ids))
    }

    /// The registry this bus records its own metrics in (see
    /// [`instrument`](crate::observe::instrument)): empty when instrumentation is off.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use herald::{instrument, Bus, Message};
    /// let bus = Bus::memory();
    /// bus.publish(Message::json("orders.placed", &1u32)?).await?;
    /// assert_eq!(bus.metrics().get(instrument::PUBLISH_SECONDS).unwrap().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A monitor of this bus's [`default_slos`](crate::observe::instrument::default_slos)
    /// (and any added later) that publishes violations on this bus as
    /// [`perf.slo_violation`](crate::observe::slo::VIOLATION_TOPIC); call
    /// [`start`](crate::observe::slo::Monitor::start) to run its loop.
    pub fn slo_monitor(&self) -> Result<crate::observe::slo::Monitor> {
        let monitor = crate::observe::slo::Monitor::builder(self.inner.metrics.clone())
            .bus(self.clone())
            .build()?;
        for slo in crate::observe::instrument::default_slos() {
            monitor.add(slo)?;
        }
        let (health, metrics) = (self.inner.health.clone(), self.inner.metrics.clone());
        monitor.before_check(move || health.refresh(&metrics));
        Ok(monitor)
    }

    /// How each member of a consumer group in this process is doing: when
    /// it last asked for work, what it holds unsettled and for how long,
    /// and whether it runs, is stalled (holding work and settling nothing
    /// for `HERALD_STALL_AFTER`) or has its breaker open.
    ///
    /// ```
    /// use herald::health::MemberState;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = herald::Bus::memory();
    /// let _sub = bus.subscribe_raw("orders.>").group("billing").await?;
    /// let members = bus.consumer_health();
    /// assert_eq!(members[0].group, "billing");
    /// assert_eq!(members[0].state, MemberState::Running);
    /// # Ok(()) }
    /// ```
    pub fn consumer_health(&self) -> Vec<MemberHealth> {
        self.inner.health.members()
    }

    /// Write the consumer-health gauges
    /// ([`herald_consumer_stalled`](crate::observe::health::CONSUMER_STALLED)
    /// and its neighbours) into this bus's metrics now: the SLO monitor does
    /// before each check, and an exporter before it renders.
    pub fn refresh_consumer_health(&self) {
        self.inner.health.refresh(&self.inner.metrics);
    }

    pub(crate) fn instruments(&self) -> Option<&Arc<Instruments>> {
        self.inner.instruments.as_ref()
    }

    /// Append prepared envelopes through the publish path (batching,
    /// retry, breaker).
    pub(crate) async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.publisher.append(batch).await
    }

    /// The validated envelopes [`publish`](Bus::publish) would append, for
    /// appending them another way (a transport's outbox inside the caller's
    /// own transaction).
    pub fn prepare<I>(&self, items: I) -> Result<Vec<Envelope>>
    where
        I: IntoIterator,
        I::Item: Publish,
    {
        let items = items.into_iter();
        let mut batch = Vec::with_capacity(items.size_hint().0);
        for item in items {
            let mut envelope = item.into_envelope(&self.inner.source)?;
            crate::observe::trace::inject(
                &mut envelope,
                &self.inner.limits,
                self.inner.propagator(),
            );
            envelope.validate(&self.inner.limits)?;
            batch.push(envelope);
        }
        Ok(batch)
    }

    /// Subscribe to every variant of the typed event `E`, decoded.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use herald::{Bus, Event};
    ///
    /// #[derive(Event, Debug)]
    /// enum OrderEvent { Placed { total: u32 }, Shipped }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let mut big = bus
    ///     .subscribe::<OrderEvent>()
    ///     .filter(|e| matches!(e, OrderEvent::Placed { total } if *total > 100))
    ///     .await?;
    /// bus.publish([OrderEvent::Placed { total: 5 }, OrderEvent::Placed { total: 500 }]).await?;
    /// let got = big.next().await.unwrap()?;
    /// assert!(matches!(*got, OrderEvent::Placed { total: 500 }));
    /// # Ok(()) }
    /// ```
    pub fn subscribe<E: Event>(&self) -> Subscribe<E> {
        let mut raw = self.subscribe_raw_empty();
        for topic in E::TOPICS {
            raw = raw.pattern(topic);
        }
        Subscribe {
            raw,
            filters: Vec::new(),
            readers: None,
            _event: PhantomData,
        }
    }

    /// Subscribe to raw envelopes on the topics matching `pattern` (`*` is
    /// one segment, `>` the rest); add more with
    /// [`SubscribeRaw::pattern`].
    pub fn subscribe_raw(&self, pattern: impl AsRef<str>) -> SubscribeRaw {
        self.subscribe_raw_empty().pattern(pattern)
    }

    /// A raw subscription to several patterns.
    pub(crate) fn subscribe_raw_patterns(&self, patterns: &[String]) -> SubscribeRaw {
        patterns
            .iter()
            .fold(self.subscribe_raw_empty(), |raw, p| raw.pattern(p))
    }

    fn subscribe_raw_empty(&self) -> SubscribeRaw {
        let config = &self.inner.config;
        let mut spec = SubscribeSpec::new(Vec::new());
        spec.buffer = config.buffer();
        spec.start = config.start();
        spec.ack_wait = config.ack_wait_duration();
        SubscribeRaw {
            bus: self.clone(),
            spec,
            error: None,
            kind: "subscription",
            ephemeral: false,
        }
    }

    /// The highest `seq` on `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &str) -> Result<Option<u64>> {
        let topic = Topic::new(topic)?;
        self.inner.transport.last_seq(&topic).await
    }

    /// Every topic with events, by name, with its last `seq`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use herald::{Bus, Message};
    /// let bus = Bus::memory();
    /// bus.publish(Message::json("orders.placed", &1)?).await?;
    /// let topics = bus.topics().await?;
    /// assert_eq!((topics[0].topic.as_str(), topics[0].last_seq), ("orders.placed", 1));
    /// # Ok(()) }
    /// ```
    pub async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.transport.topics().await
    }

    /// Up to `limit` retained events of `topic` from `from` on, in `seq`
    /// order, touching no group; page on from the last `seq` + 1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// use herald::{Bus, Message, StartPosition};
    /// let bus = Bus::memory();
    /// for n in 0..5 {
    ///     bus.publish(Message::json("orders.placed", &n)?).await?;
    /// }
    /// let page = bus.replay("orders.placed", StartPosition::Seq(2), 2).await?;
    /// assert_eq!(page.iter().map(|e| e.seq().unwrap()).collect::<Vec<_>>(), [2, 3]);
    /// # Ok(()) }
    /// ```
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let topic = Topic::new(topic)?;
        let limit = limit.min(MAX_REPLAY_PAGE);
        self.inner.transport.replay(&topic, from, limit).await
    }

    /// Every durable consumer group, with its offset and lag on each topic
    /// it follows.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.inner.transport.groups().await
    }

    /// Where event `seq` of `topic` stands for consumer group `group`:
    /// pending, in flight (with its attempt), acked or dead-lettered.
    pub async fn delivery_state(
        &self,
        topic: &str,
        seq: u64,
        group: &str,
    ) -> Result<DeliveryState> {
        let topic = Topic::new(topic)?;
        self.inner
            .transport
            .delivery_state(&topic, seq, group)
            .await
    }

    /// What the transport can do.
    pub fn features(&self) -> Features {
        self.inner.transport.features()
    }

    /// The configuration this bus runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Close: later publishes, calls and subscribes fail with
    /// `UNAVAILABLE`, a subscribe in flight fails with it at once, open
    /// subscriptions end (undelivered events of the in-memory transport are
    /// gone with it). Idempotent.
    pub async fn close(&self) -> Result<()> {
        let open = self.inner.lifecycle.close();
        self.inner.commands.close();
        // Deliveries dropped unsettled (a stopped handler's abandoned work)
        // are nacked in background tasks: let them land first.
        self.inner.detached.settled(CLOSE_SETTLE_WAIT).await;
        let closed = self.inner.transport.close().await;
        // The transport ended the streams it knows of; these end the rest.
        for subscription in open {
            subscription.close();
        }
        closed
    }
}

/// Builds a [`Bus`]; see [`Bus::builder`].
#[must_use = "call .build() to get the bus"]
pub struct BusBuilder {
    instrument: bool,
    metrics: Option<Metrics>,
    config: Option<Config>,
    transport: Option<Arc<dyn DynTransport>>,
    batching: Option<Batching>,
    publish_retry: Option<RetryPolicy>,
    publish_breaker: Option<CircuitBreaker>,
    handlers: HandlerDefaults,
    propagator: Option<Arc<dyn Propagator>>,
}

impl Default for BusBuilder {
    fn default() -> Self {
        BusBuilder {
            instrument: true,
            metrics: None,
            config: None,
            transport: None,
            batching: None,
            publish_retry: None,
            publish_breaker: None,
            handlers: HandlerDefaults::default(),
            propagator: None,
        }
    }
}

impl BusBuilder {
    /// Record herald's own metrics (default: on; see
    /// [`instrument`](crate::observe::instrument)). Off, [`Bus::metrics`] stays empty.
    pub fn instrument(mut self, on: bool) -> Self {
        self.instrument = on;
        self
    }

    /// Record into `metrics` (default: a registry of this bus's own), to
    /// export several buses, or a service's own metrics, together.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Use `config` (default: [`Config::from_env`], the defaults where no
    /// `HERALD_*` variable is set).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Use `transport` (default: a fresh [`MemoryTransport`]).
    pub fn transport(mut self, transport: impl IntoTransport) -> Self {
        self.transport = Some(transport.into_shared());
        self
    }

    /// Coalesce publishes into batches (default: each publish is its own
    /// append). See [`Batching`].
    pub fn batching(mut self, batching: Batching) -> Self {
        self.batching = Some(batching);
        self
    }

    /// Retry publishes that fail with a transient transport error
    /// (`UNAVAILABLE`, `TIMEOUT`) by `policy`.
    pub fn publish_retry(mut self, policy: RetryPolicy) -> Self {
        self.publish_retry = Some(policy);
        self
    }

    /// Guard publishing with `breaker`: transient failures open it, and
    /// while it is open a publish fails fast with `UNAVAILABLE`.
    pub fn publish_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.publish_breaker = Some(breaker);
        self
    }

    /// Continue traces through `propagator` (`herald-otel`'s, say) on this
    /// bus: published events carry the caller's span as their
    /// `traceparent`, handlers' spans continue the handled event's trace.
    /// Without one the bus uses the process's
    /// ([`set_propagator`](crate::trace::set_propagator)), if any.
    pub fn propagator(mut self, propagator: impl Propagator) -> Self {
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// Wrap every handler of this bus in `layer` (outside the handler's own
    /// layers).
    ///
    /// ```
    /// use herald::{breaker::CircuitBreaker, Bus};
    /// let bus = Bus::builder().layer(CircuitBreaker::default()).build().unwrap();
    /// # drop(bus);
    /// ```
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.handlers.layers.push(Arc::new(layer));
        self
    }

    /// The retry policy of handlers that do not set their own.
    pub fn handler_retry(mut self, policy: RetryPolicy) -> Self {
        self.handlers.retry = Some(policy);
        self
    }

    /// Validate the configuration and build the bus.
    pub fn build(mut self) -> Result<Bus> {
        let config = match self.config.take() {
            Some(config) => config,
            None => Config::from_env()?,
        };
        config.validate()?;
        if let Some(b) = &self.batching {
            b.validate()?;
        }
        for policy in [&self.publish_retry, &self.handlers.retry]
            .into_iter()
            .flatten()
        {
            policy.validate()?;
        }
        let transport = self
            .transport
            .take()
            .unwrap_or_else(|| Arc::new(MemoryTransport::default()));
        Ok(Bus::from_parts(transport, config, self))
    }
}

/// Options of a raw subscription; `.await` it to open the subscription.
#[must_use = "a subscription opens when awaited"]
pub struct SubscribeRaw {
    bus: Bus,
    spec: SubscribeSpec,
    error: Option<Error>,
    /// What its consumer-health entry is called: a subscription, a handler.
    kind: &'static str,
    /// Asked to be ephemeral: no default group on a durable store.
    ephemeral: bool,
}

/// The longest default group name (a group name's limit).
const MAX_GROUP_NAME: usize = 255;

/// The group an unnamed subscription on a durable store joins:
/// `<base>/<patterns>` (comma-separated), `base` being `HERALD_GROUP` or
/// else the service's name (`HERALD_SOURCE`); one too long ends in a hash
/// of the whole instead.
///
/// ```
/// assert_eq!(herald::default_group("billing", &["orders.>", "refunds.*"]), "billing/orders.>,refunds.*");
/// ```
pub fn default_group(base: &str, patterns: &[&str]) -> String {
    let name = format!("{base}/{}", patterns.join(","));
    if name.len() <= MAX_GROUP_NAME {
        return name;
    }
    let hash = crate::backend::fnv1a(name.as_bytes());
    let mut cut = MAX_GROUP_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &name[..cut])
}

impl SubscribeRaw {
    /// Also follow topics matching `pattern`.
    pub fn pattern(mut self, pattern: impl AsRef<str>) -> Self {
        match Pattern::new(pattern) {
            Ok(p) => self.spec.patterns.push(p),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Name this subscription's consumer-health entry for what it is (a
    /// handler's).
    pub(crate) fn member_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Get every matching event from the start position, and keep no
    /// position: a restart starts again (DESIGN.md §4.3, fan-out). Without
    /// it, a subscription on a durable store that names no group joins its
    /// default group ([`default_group`]: `HERALD_GROUP` or the service's
    /// name, plus the patterns), which resumes after its last ack on
    /// restart; on the memory store every subscription is ephemeral.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = herald::Bus::memory();
    /// let tail = bus.subscribe_raw("orders.>").ephemeral().await?;
    /// # drop(tail);
    /// # Ok(()) }
    /// ```
    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// Join consumer group `name`: its members share the events, and
    /// same-`key` events go to one member at a time, in order.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if let Err(e) = crate::model::envelope::check_text("group", &name) {
            self.error.get_or_insert(e);
        }
        self.spec.group = Some(name);
        self
    }

    /// Where to start reading, as [`StartPosition`] says: an existing group keeps its position.
    /// Default: [`Config::start_position`].
    pub fn start(mut self, start: StartPosition) -> Self {
        self.spec.start = start;
        self
    }

    /// Undelivered events buffered for this subscriber before publishers
    /// wait (default from [`Config::subscription_buffer`]), 1–1,000,000.
    pub fn buffer(mut self, n: usize) -> Self {
        if let Err(e) = crate::config::in_range("buffer", n, 1, 1_000_000) {
            self.error.get_or_insert(e);
        }
        self.spec.buffer = n;
        self
    }

    /// Redeliver a delivery left unsettled this long (default from
    /// [`Config::ack_wait`]), 10 ms–3600 s.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        if !(MIN_ACK_WAIT..=MAX_ACK_WAIT).contains(&wait) {
            self.error.get_or_insert(crate::config::invalid(
                "ack_wait",
                format!("{wait:?}"),
                "10 ms to 3600 s",
            ));
        }
        self.spec.ack_wait = wait;
        self
    }

    /// A group member holds at most this many deliveries at once, claimed
    /// and not yet settled (default [`DEFAULT_MAX_IN_FLIGHT`](crate::config::DEFAULT_MAX_IN_FLIGHT)),
    /// 1–10,000. One claim leases up to what is free of it, so a consumer
    /// that settles without waiting (see [`Delivery::ack_nowait`](crate::Delivery::ack_nowait))
    /// keeps this many in flight.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        let (low, high) = crate::config::MAX_IN_FLIGHT_RANGE;
        if let Err(e) = crate::config::in_range("max_in_flight", n, low, high) {
            self.error.get_or_insert(e);
        }
        self.spec.max_in_flight = n;
        self
    }

    /// Delivery attempts before this group dead-letters an event, 1–1,000
    /// (default: the store's, `HERALD_MAX_DELIVER`, 5). The group's first
    /// member sets it for the process; every store honours it.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use herald::{Bus, Message};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let mut sub = bus.subscribe_raw("jobs.run").group("runner").max_deliver(1).await?;
    /// bus.publish(Message::json("jobs.run", &1)?).await?;
    /// sub.next().await.unwrap()?.nack().await?;
    /// assert_eq!(bus.dead_letters().await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn max_deliver(mut self, n: u32) -> Self {
        let (low, high) = crate::config::delivery::MAX_DELIVER_RANGE;
        if let Err(e) = crate::config::in_range("max_deliver", n, low, high) {
            self.error.get_or_insert(e);
        }
        self.spec.max_deliver = Some(n);
        self
    }

    /// Which of the group's events are handled in order (default
    /// [`GroupOrdering::PerKey`]); [`GroupOrdering::PerTopic`] keeps each
    /// topic's keyless events in order too.
    pub fn ordering(mut self, ordering: GroupOrdering) -> Self {
        self.spec.ordering = ordering;
        self
    }

    /// Which kinds to receive (default events and intents).
    pub fn kinds(mut self, kinds: KindFilter) -> Self {
        self.spec.kinds = kinds;
        self
    }
}

impl IntoFuture for SubscribeRaw {
    type Output = Result<Subscription>;
    type IntoFuture = BoxFuture<'static, Result<Subscription>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Some(e) = self.error {
                return Err(e);
            }
            if self.spec.patterns.is_empty() {
                return Err(Error::validation(
                    "a subscription needs at least one pattern",
                ));
            }
            let inner = &self.bus.inner;
            let mut spec = self.spec;
            if spec.group.is_some() && self.ephemeral {
                return Err(Error::validation(
                    "a subscription cannot both join a group and be ephemeral",
                ));
            }
            if spec.group.is_none() && !self.ephemeral && inner.transport.features().durable {
                let config = &inner.config;
                let base = match config.delivery_config().group_name() {
                    Some(group) => group.to_owned(),
                    None => config.effective_source(),
                };
                let patterns: Vec<String> = spec.patterns.iter().map(|p| p.to_string()).collect();
                let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
                spec.group = Some(default_group(&base, &patterns));
            }
            let spec_group = spec.group.clone();
            let spec_patterns = spec.patterns.iter().map(|p| p.to_string()).collect();
            let sub = inner
                .lifecycle
                .subscribe(inner.transport.clone(), spec)
                .await?;
            let mut sub = sub.tracked(inner.detached.clone());
            if let Some(group) = &spec_group {
                sub = sub.watched(inner.health.join(self.kind, group, spec_patterns));
            }
            Ok(match &inner.instruments {
                Some(i) => sub.instrumented(i.clone()),
                None => sub,
            })
        })
    }
}

/// Options of a typed subscription; `.await` it to open the subscription.
#[must_use = "a subscription opens when awaited"]
pub struct Subscribe<E> {
    raw: SubscribeRaw,
    filters: Vec<Filter<E>>,
    /// The type's schemas to check its topics' subjects against at start.
    readers: Option<Vec<(&'static str, serde_json::Value)>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> Subscribe<E> {
    /// Keep only events for which `keep` is true; filters compose.
    pub fn filter(mut self, keep: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.filters.push(Box::new(keep));
        self
    }

    /// See [`SubscribeRaw::group`].
    pub fn group(self, name: impl Into<String>) -> Self {
        self.map_raw(|r| r.group(name))
    }

    /// See [`SubscribeRaw::ephemeral`].
    pub fn ephemeral(self) -> Self {
        self.map_raw(SubscribeRaw::ephemeral)
    }

    /// Where to start reading, as [`StartPosition`] says: an existing group keeps its position.
    /// Default: [`Config::start_position`].
    pub fn start(self, start: StartPosition) -> Self {
        self.map_raw(|r| r.start(start))
    }

    /// See [`SubscribeRaw::ack_wait`].
    pub fn ack_wait(self, wait: Duration) -> Self {
        self.map_raw(|r| r.ack_wait(wait))
    }

    /// See [`SubscribeRaw::buffer`].
    pub fn buffer(self, n: usize) -> Self {
        self.map_raw(|r| r.buffer(n))
    }

    /// See [`SubscribeRaw::max_in_flight`].
    pub fn max_in_flight(self, n: usize) -> Self {
        self.map_raw(|r| r.max_in_flight(n))
    }

    /// See [`SubscribeRaw::max_deliver`].
    pub fn max_deliver(self, n: u32) -> Self {
        self.map_raw(|r| r.max_deliver(n))
    }

    /// See [`SubscribeRaw::ordering`].
    pub fn ordering(self, ordering: GroupOrdering) -> Self {
        self.map_raw(|r| r.ordering(ordering))
    }

    fn map_raw(mut self, f: impl FnOnce(SubscribeRaw) -> SubscribeRaw) -> Self {
        self.raw = f(self.raw);
        self
    }
}

impl<E: EventSchema> Subscribe<E> {
    /// Before subscribing, check that `E` reads every event its topics'
    /// subjects allow ([`Schemas::check_event`](crate::Schemas::check_event)):
    /// the subscription fails fast with `VALIDATION` naming what it could
    /// not decode, instead of dead-lettering events one by one.
    pub fn check_schema(mut self) -> Self {
        self.readers = Some(E::schemas());
        self
    }
}

impl<E: Event> IntoFuture for Subscribe<E> {
    type Output = Result<TypedSubscription<E>>;
    type IntoFuture = BoxFuture<'static, Result<TypedSubscription<E>>>;

    fn into_future(self) -> Self::IntoFuture {
        let Subscribe {
            raw,
            filters,
            readers,
            ..
        } = self;
        Box::pin(async move {
            if let Some(readers) = readers {
                raw.bus.schemas().check_reader(&readers).await?;
            }
            let mut typed = raw.await?.typed::<E>();
            for f in filters {
                typed = typed.filter(f);
            }
            Ok(typed)
        })
    }
}

impl crate::observe::slo::ViolationSink for Bus {
    fn publish(&self, message: crate::model::message::Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { Bus::publish(self, message).await.map(drop) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryConfig;
    use crate::model::message::Message;

    /// One page limit on every store: the bus never asks a store for more
    /// than `MAX_REPLAY_PAGE` events, whatever the caller asks for.
    #[tokio::test]
    async fn a_replay_page_holds_at_most_the_page_limit() {
        let history = MAX_REPLAY_PAGE + 5;
        let transport =
            MemoryTransport::new(MemoryConfig::default().history_size(history)).unwrap();
        let bus = Bus::new(transport);
        let batch: Vec<Message> = (0..history)
            .map(|n| Message::json("replay.limit", &n).unwrap())
            .collect();
        bus.publish(batch).await.unwrap();
        let page = bus
            .replay("replay.limit", StartPosition::Earliest, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.len(), MAX_REPLAY_PAGE);
        let rest = bus
            .replay(
                "replay.limit",
                StartPosition::Seq(MAX_REPLAY_PAGE as u64 + 1),
                usize::MAX,
            )
            .await
            .unwrap();
        assert_eq!(rest.len(), 5, "paging on reads the rest");
    }
}

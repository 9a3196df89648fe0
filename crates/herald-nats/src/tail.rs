//! Group-less subscriptions: following topic streams into a delivery queue.
//!
//! Owns [`subscribe`] for subscriptions without a group: find the topic
//! streams the patterns match (listing them, and hearing of new ones from
//! JetStream's stream-created advisories, subscribed to before the listing
//! so none is missed), and feed each into one [`Queue`] through an ordered
//! consumer — ephemeral, flow-controlled, re-created by the client from the
//! last sequence it saw after a reconnect. The queue does the rest
//! (capacity, nack and ack-wait redelivery, expiry, priority). Such
//! subscriptions commit nothing. Groups are `group`'s (which also follows
//! streams through [`Streams`]); the store hosts the queue (its dead
//! letters go to `dead_letters`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::response::Response;
use futures_util::{FutureExt, StreamExt};
use herald::backend::queue::{self, Queue, QueueHost};
use herald::{Result, StartPosition, SubscribeSpec, Subscription, Topic};
use serde::Deserialize;

use crate::codec;
use crate::conn::Inner;
use crate::errors;

/// How often a feeder blocked on an idle stream checks that its queue is
/// still open.
const CLOSE_CHECK: Duration = Duration::from_millis(250);

/// Most messages a feeder hands to its queue at once.
const READY_MAX: usize = 256;

/// Advisories JetStream publishes when a stream is made.
const STREAM_CREATED: &str = "$JS.EVENT.ADVISORY.STREAM.CREATED.>";

pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    inner.check_open()?;
    spec.validate()?;
    let host: Weak<dyn QueueHost> = Arc::downgrade(inner) as Weak<Inner>;
    let queue = Queue::new(spec.clone(), host);
    queue.join();
    inner.register(&queue)?;
    let streams = Streams::follow(inner, &spec).await?;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    for found in streams.existing {
        let start = match spec.start {
            StartPosition::Latest => DeliverPolicy::ByStartSequence {
                start_sequence: found.last_seq + 1,
            },
            _ => policy(&spec.start),
        };
        start_feed(inner, &queue, &seen, found.name, start);
    }
    tokio::spawn(watch_new(
        inner.clone(),
        queue.clone(),
        seen,
        streams.created,
    ));
    Ok(queue::member(queue, spec.max_in_flight))
}

/// Where a stream made after the subscription opened is read from.
pub(crate) fn policy(start: &StartPosition) -> DeliverPolicy {
    match start {
        StartPosition::Earliest | StartPosition::Latest => DeliverPolicy::All,
        StartPosition::Seq(n) => DeliverPolicy::ByStartSequence { start_sequence: *n },
        StartPosition::Time(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(t.timestamp_millis()) * 1_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    }
}

fn start_feed(
    inner: &Arc<Inner>,
    queue: &Arc<Queue>,
    seen: &Mutex<HashSet<String>>,
    stream: String,
    start: DeliverPolicy,
) {
    if seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(stream.clone())
    {
        tokio::spawn(feed(inner.clone(), queue.clone(), stream, start));
    }
}

/// The topic streams a subscription follows now, and news of new ones.
pub(crate) struct Streams {
    pub(crate) existing: Vec<Found>,
    pub(crate) created: async_nats::Subscriber,
}

/// A topic stream and its state when it was listed.
pub(crate) struct Found {
    pub(crate) name: String,
    pub(crate) topic: Topic,
    /// The topic's partitions.
    pub(crate) partitions: u32,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
}

#[derive(Deserialize)]
struct ListPage {
    total: usize,
    #[serde(default)]
    streams: Option<Vec<Listed>>,
}

#[derive(Deserialize)]
struct Listed {
    config: ListedConfig,
    state: ListedState,
}

#[derive(Deserialize)]
struct ListedConfig {
    name: String,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct ListedState {
    first_seq: u64,
    last_seq: u64,
}

#[derive(Deserialize)]
pub(crate) struct Created {
    pub(crate) stream: String,
}

impl Streams {
    /// Subscribe to stream creations, then list the topic streams matching
    /// `spec`'s patterns.
    pub(crate) async fn follow(inner: &Inner, spec: &SubscribeSpec) -> Result<Streams> {
        let created =
            inner.client.subscribe(STREAM_CREATED).await.map_err(|e| {
                errors::nats(herald::ErrorCode::Unavailable, "hear of new streams", e)
            })?;
        let mut existing: Vec<Found> = Vec::new();
        for pattern in &spec.patterns {
            for found in list(inner, &inner.names.filter(pattern.as_str())).await? {
                if !existing.iter().any(|f| f.name == found.name) {
                    existing.push(found);
                }
            }
        }
        Ok(Streams { existing, created })
    }
}

/// This store's topic streams with a subject `filter` matches
/// (`STREAM.LIST` pages).
pub(crate) async fn list(inner: &Inner, filter: &str) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut offset = 0;
    loop {
        let page: Response<ListPage> = inner
            .js
            .request(
                "STREAM.LIST",
                &serde_json::json!({ "subject": filter, "offset": offset }),
            )
            .await
            .map_err(|e| errors::request("list topic streams", e))?;
        let page = match page {
            Response::Ok(p) => p,
            Response::Err { error } => return Err(errors::api("list topic streams", &error)),
        };
        let listed = page.streams.unwrap_or_default();
        offset += listed.len();
        for s in listed {
            let topic = s
                .config
                .subjects
                .iter()
                .find_map(|s| inner.names.topic_of(s));
            if let Some(topic) = topic.filter(|t| inner.names.stream(t.as_str()) == s.config.name) {
                found.push(Found {
                    partitions: crate::names::partitions_in(s.config.description.as_deref())
                        .unwrap_or_else(|| inner.config.partition_count()),
                    name: s.config.name,
                    topic,
                    first_seq: s.state.first_seq,
                    last_seq: s.state.last_seq,
                });
            }
        }
        if offset >= page.total || offset == 0 {
            return Ok(found);
        }
    }
}

/// The topic of stream `name` and its partitions, when it is one of this
/// store's topic streams and `spec` follows it.
pub(crate) async fn followed_topic(
    inner: &Inner,
    spec: &SubscribeSpec,
    name: &str,
) -> Option<(Topic, u32)> {
    let stream = inner.js.get_stream(name).await.ok()?;
    let topic = stream
        .cached_info()
        .config
        .subjects
        .iter()
        .find_map(|s| inner.names.topic_of(s))?;
    (inner.names.stream(topic.as_str()) == name && spec.patterns.iter().any(|p| p.matches(&topic)))
        .then(|| (topic, crate::log::partitions_of(inner, &stream)))
}

/// Start feeding the queue from every matching stream made from now on.
async fn watch_new(
    inner: Arc<Inner>,
    queue: Arc<Queue>,
    seen: Arc<Mutex<HashSet<String>>>,
    mut created: async_nats::Subscriber,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut check = tokio::time::interval(CLOSE_CHECK);
    loop {
        tokio::select! {
            msg = created.next() => {
                let Some(msg) = msg else { return };
                let Ok(advisory) = serde_json::from_slice::<Created>(&msg.payload) else {
                    continue;
                };
                if followed_topic(&inner, queue.spec(), &advisory.stream).await.is_some() {
                    let start = policy(&queue.spec().start);
                    start_feed(&inner, &queue, &seen, advisory.stream, start);
                }
            }
            _ = shutdown.changed() => return,
            _ = check.tick() => {
                if queue.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Push stream `stream`'s messages from `start` into `queue` until it closes.
async fn feed(inner: Arc<Inner>, queue: Arc<Queue>, stream: String, start: DeliverPolicy) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut check = tokio::time::interval(CLOSE_CHECK);
    let spec = queue.spec().clone();
    let mut next: Option<u64> = None;
    let mut retry = Duration::from_millis(50);
    loop {
        let from = next.map_or(start, |s| DeliverPolicy::ByStartSequence {
            start_sequence: s,
        });
        let mut messages = match ordered(&inner, &stream, from).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream, error = %e, "cannot read a topic stream; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(2));
                if queue.is_closed() {
                    return;
                }
                continue;
            }
        };
        retry = Duration::from_millis(50);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let mut batch = Vec::new();
                    let mut failed = false;
                    let mut msg = msg;
                    // Take every message already here, so the queue orders
                    // them by priority rather than by arrival.
                    loop {
                        match msg {
                            Some(Ok(m)) => {
                                if let Some(env) = decode(&inner, &stream, &m).await {
                                    next = env.seq().map(|s| s + 1);
                                    if spec.wants(env.topic().as_str(), env.kind()) && spec.start.admits(&env) {
                                        batch.push(Arc::new(env));
                                    }
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(stream, error = %e, "a topic stream's reader failed; re-reading");
                                failed = true;
                                break;
                            }
                            None => {
                                failed = true;
                                break;
                            }
                        }
                        if batch.len() >= READY_MAX {
                            break;
                        }
                        match messages.next().now_or_never() {
                            Some(m) => msg = m,
                            None => break,
                        }
                    }
                    if !batch.is_empty() && !queue.push(batch).await {
                        return;
                    }
                    if failed {
                        break;
                    }
                }
                _ = shutdown.changed() => return,
                _ = check.tick() => {
                    if queue.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}

/// The envelope of `msg`, or `None` (logged) when herald cannot read it;
/// it stays in the stream.
async fn decode(
    inner: &Inner,
    stream: &str,
    msg: &async_nats::jetstream::Message,
) -> Option<herald::Envelope> {
    let info = msg.info().ok()?;
    let seq = info.stream_sequence;
    let env = codec::envelope(
        inner,
        &msg.subject,
        msg.headers.as_ref(),
        msg.payload.clone(),
        seq,
        codec::millis(info.published),
        1,
    )
    .await;
    match env {
        Ok(env) => Some(env),
        Err(e) => {
            tracing::warn!(stream, seq, error = %e, "skipping a message herald cannot read");
            None
        }
    }
}

/// An ordered consumer on `stream` from `start`.
async fn ordered(inner: &Inner, stream: &str, start: DeliverPolicy) -> Result<pull::Ordered> {
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(
            herald::ErrorCode::Unavailable,
            &format!("read stream {stream}"),
            e,
        )
    };
    let s = inner
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(&e))?;
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    consumer.messages().await.map_err(|e| unavailable(&e))
}

//! The NATS store: a connection, its JetStream context, and the topic
//! streams it has made sure of.
//!
//! Owns [`NatsStore`] (open, publish, last seq, close) and the making of
//! topic streams from the configuration. Every topic is a stream of its own
//! whose sequence *is* the topic's `seq`: JetStream numbers a stream's
//! messages from 1 without gaps, so `seq` needs no bookkeeping of herald's,
//! survives retention (a stream's sequence never goes back), and a plain
//! client's publish gets a `seq` like herald's own. Reading is `tail`'s.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, stream};
use herald::{Envelope, ErrorCode, Result, Topic};
use tokio::sync::watch;

use crate::config::{NatsConfig, Storage};
use crate::errors;
use crate::names::Names;

/// herald on NATS JetStream; clones share one connection.
///
/// ```no_run
/// use herald::{Bus, Message, Payload};
/// use herald_nats::{NatsConfig, NatsStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let store = NatsStore::open(NatsConfig::new("nats://127.0.0.1:4222")).await?;
/// let bus = Bus::new(store);
/// let seq = bus.publish(Message::new("orders.placed", Payload::null())).await?;
/// assert!(seq[0] >= 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The store itself, for tasks it spawns.
    pub(crate) this: std::sync::Weak<Inner>,
    pub(crate) config: NatsConfig,
    pub(crate) names: Names,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// Topics whose stream this process made sure of.
    streams: Mutex<HashSet<Topic>>,
    closed: AtomicBool,
    /// Names this store among a group's members and leaders.
    pub(crate) member_id: String,
    /// The groups this process leads.
    leaders: Mutex<std::collections::HashMap<String, Arc<crate::group::Leader>>>,
    /// Groups whose leader here is stepping down, and when it is done.
    stepping_down: Mutex<std::collections::HashMap<String, watch::Receiver<bool>>>,
    /// Per group, the events its leaders here acked lately.
    recent_acks: Mutex<std::collections::HashMap<String, Arc<Mutex<crate::group::RecentAcks>>>>,
    /// Held while this process tries to become a group's leader.
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// Whether the large-payload stream was made sure of.
    pub(crate) payloads_ready: AtomicBool,
    /// Dead letters being written; readers of dead letters wait for them.
    dead_letters_pending: watch::Sender<usize>,
    /// Open subscriptions' queues, closed with the store.
    queues: Mutex<Vec<std::sync::Weak<herald::queue::Queue>>>,
    /// Flips to `true` on close; readers stop.
    pub(crate) shutdown: watch::Sender<bool>,
}

impl NatsStore {
    /// Connect to NATS and make sure the dead-letter stream exists.
    /// `UNAVAILABLE` when the server cannot be reached.
    pub async fn open(config: NatsConfig) -> Result<NatsStore> {
        config.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(config.timeout())
            .connect(config.url())
            .await
            .map_err(|e| {
                errors::nats(
                    ErrorCode::Unavailable,
                    &format!("connect to {}", herald::config::redact(config.url())),
                    e,
                )
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.timeout())
            .build(client.clone());
        let names = Names::new(config.subject_prefix());
        let inner = Arc::new_cyclic(|this| Inner {
            this: this.clone(),
            names,
            client,
            js,
            streams: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
            queues: Mutex::new(Vec::new()),
            member_id: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            leaders: Mutex::new(std::collections::HashMap::new()),
            stepping_down: Mutex::new(std::collections::HashMap::new()),
            dead_letters_pending: watch::channel(0).0,
            payloads_ready: AtomicBool::new(false),
            starting: tokio::sync::Mutex::new(()),
            recent_acks: Mutex::new(std::collections::HashMap::new()),
            shutdown: watch::channel(false).0,
            config,
        });
        let dlq = stream::Config {
            name: inner.names.dlq_stream(),
            subjects: vec![inner.names.dlq_subjects()],
            ..inner.stream_defaults()
        };
        inner
            .js
            .create_or_update_stream(dlq)
            .await
            .map_err(|e| errors::nats(ErrorCode::Unavailable, "make the dead-letter stream", e))?;
        Ok(NatsStore { inner })
    }

    /// The highest `seq` of `topic`, `None` before its first event.
    pub async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        self.inner.check_open()?;
        self.inner.last_seq(topic).await
    }

    /// Make sure `topic`'s stream exists with the configured limits, so
    /// plain NATS clients can publish to its subject before herald has.
    pub async fn ensure_topic(&self, topic: &Topic) -> Result<()> {
        self.inner.check_open()?;
        self.inner.ensure_stream(topic).await
    }

    /// The subject of `topic`, where plain NATS clients publish and read it.
    pub fn subject(&self, topic: &Topic) -> String {
        self.inner.names.subject(topic.as_str())
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Stop: later calls fail with `UNAVAILABLE`, readers stop, and
    /// what was sent is flushed. Idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.shutdown.send_replace(true);
        let queues =
            std::mem::take(&mut *self.inner.queues.lock().unwrap_or_else(|p| p.into_inner()));
        for queue in queues.iter().filter_map(std::sync::Weak::upgrade) {
            queue.close();
        }
        let leaders: Vec<_> = self.inner.lock_leaders().drain().map(|(_, l)| l).collect();
        for leader in leaders {
            leader.step_down().await;
        }
        // A flush that fails has nothing left to deliver to.
        let _ = self.inner.client.flush().await;
    }

    /// Append `batch`, each event to its topic's stream, pipelined: all are
    /// sent before the first ack is awaited. Not atomic: JetStream 2.9 has
    /// no multi-message transaction, so a failure part-way leaves the
    /// events before it appended (a retry with the same idempotency keys
    /// appends only the rest).
    pub(crate) async fn append(&self, batch: Vec<Envelope>) -> Result<Vec<u64>> {
        let inner = &self.inner;
        inner.check_open()?;
        let max = inner.client.server_info().max_payload;
        let mut acks = Vec::with_capacity(batch.len());
        for env in &batch {
            inner.ensure_stream(env.topic()).await?;
            let (mut headers, body) = crate::codec::headers_of(env)?;
            let mut size = body.len()
                + crate::codec::header_pairs(Some(&headers))
                    .map(|(n, v)| n.len() + v.len() + 4)
                    .sum::<usize>();
            let key = env.idempotency_key();
            size += key.len() + 16;
            let body = if crate::payload::too_large(body.len(), size - body.len(), max) {
                let reference = crate::payload::park(inner, &body).await?;
                headers.insert(crate::payload::PAYLOAD_REF, reference.as_str());
                bytes::Bytes::new()
            } else {
                body
            };
            let publish = jetstream::message::PublishMessage::build()
                .headers(headers)
                .message_id(key.as_ref())
                .payload(body);
            let subject = inner.names.subject(env.topic().as_str());
            let ack = inner
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| errors::publish(env.topic().as_str(), e))?;
            acks.push(ack);
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for (ack, env) in acks.into_iter().zip(&batch) {
            let ack = ack
                .await
                .map_err(|e| errors::publish(env.topic().as_str(), e))?;
            seqs.push(ack.sequence);
        }
        Ok(seqs)
    }
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(errors::closed());
        }
        Ok(())
    }

    /// Stream settings every herald stream shares.
    fn stream_defaults(&self) -> stream::Config {
        stream::Config {
            storage: match self.config.storage_kind() {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.config.replica_count(),
            duplicate_window: self.config.duplicate_window(),
            max_bytes: self
                .config
                .byte_limit()
                .map_or(-1, |b| b.min(i64::MAX as u64) as i64),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Create or update `topic`'s stream once per process.
    pub(crate) async fn ensure_stream(&self, topic: &Topic) -> Result<()> {
        if self.known(topic) {
            return Ok(());
        }
        let retention = self.config.retention_policy().of(topic.as_str());
        let defaults = self.stream_defaults();
        // The server refuses a duplicate window longer than the stream keeps
        // events: dedupe covers what the topic still holds.
        let duplicate_window = retention.age().map_or(defaults.duplicate_window, |age| {
            age.min(defaults.duplicate_window)
        });
        let config = stream::Config {
            name: self.names.stream(topic.as_str()),
            subjects: vec![self.names.subject(topic.as_str())],
            max_age: retention.age().unwrap_or_default(),
            duplicate_window,
            max_messages: retention
                .events()
                .map_or(-1, |n| n.min(i64::MAX as u64) as i64),
            ..defaults
        };
        self.js.create_or_update_stream(config).await.map_err(|e| {
            errors::nats(
                ErrorCode::Unavailable,
                &format!("make the stream of `{topic}`"),
                e,
            )
        })?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone());
        Ok(())
    }

    /// Close `queue` with the store; a store closed already closes it now
    /// and refuses it (`UNAVAILABLE`).
    pub(crate) fn register(&self, queue: &Arc<herald::queue::Queue>) -> Result<()> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock `close` takes the queues with: a queue
        // registered after that is refused here, never left open.
        if self.closed.load(Ordering::Acquire) {
            drop(queues);
            queue.close();
            return Err(errors::closed());
        }
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(queue));
        Ok(())
    }

    fn lock_leaders(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<crate::group::Leader>>>
    {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's leader of `group`, if it leads it.
    pub(crate) fn leader(&self, group: &str) -> Option<Arc<crate::group::Leader>> {
        self.lock_leaders().get(group).cloned()
    }

    pub(crate) fn lead(&self, group: &str, leader: &Arc<crate::group::Leader>) {
        self.lock_leaders().insert(group.to_owned(), leader.clone());
    }

    pub(crate) fn unlead(&self, group: &str) {
        self.lock_leaders().remove(group);
    }

    /// This process's leader of `group` steps down: `done` turns `true`
    /// when it has handed back what it held and given up the lease.
    pub(crate) fn stepping_down(&self, group: &str, done: watch::Receiver<bool>) {
        self.lock_stepping_down().insert(group.to_owned(), done);
    }

    /// The step-down `done` of `group` is over.
    pub(crate) fn stepped_down(&self, group: &str, done: &watch::Receiver<bool>) {
        let mut stepping = self.lock_stepping_down();
        if stepping.get(group).is_some_and(|d| d.same_channel(done)) {
            stepping.remove(group);
        }
    }

    /// Wait until this process's leader of `group`, if one is stepping
    /// down, is done, so the next leader here reads its handover note.
    pub(crate) async fn handed_over(&self, group: &str) {
        let done = self.lock_stepping_down().get(group).cloned();
        if let Some(mut done) = done {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    fn lock_stepping_down(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, watch::Receiver<bool>>> {
        self.stepping_down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The acks of `group`'s leaders in this process.
    pub(crate) fn recent_acks(&self, group: &str) -> Arc<Mutex<crate::group::RecentAcks>> {
        self.recent_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_owned())
            .or_default()
            .clone()
    }

    /// Count a dead letter being written until the guard drops.
    pub(crate) fn dead_letter_started(&self) -> PendingDeadLetter {
        self.dead_letters_pending.send_modify(|n| *n += 1);
        PendingDeadLetter(self.dead_letters_pending.clone())
    }

    /// Wait (up to the request timeout) for the dead letters being written.
    pub(crate) async fn dead_letters_written(&self) {
        let mut rx = self.dead_letters_pending.subscribe();
        let _ = tokio::time::timeout(self.config.timeout(), rx.wait_for(|n| *n == 0)).await;
    }

    fn known(&self, topic: &Topic) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    /// The stream of `topic`, `None` when it has none yet.
    pub(crate) async fn stream(&self, topic: &Topic) -> Result<Option<stream::Stream>> {
        match self.js.get_stream(self.names.stream(topic.as_str())).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(errors::nats(
                ErrorCode::Unavailable,
                &format!("read the stream of `{topic}`"),
                e,
            )),
        }
    }

    pub(crate) async fn last_seq(&self, topic: &Topic) -> Result<Option<u64>> {
        Ok(self
            .stream(topic)
            .await?
            .map(|s| s.cached_info().state.last_sequence)
            .filter(|&s| s > 0))
    }
}

/// Whether getting a stream failed because there is none.
pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A dead letter being written; dropping it says it is done.
pub(crate) struct PendingDeadLetter(watch::Sender<usize>);

impl Drop for PendingDeadLetter {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

//! Consumer-side dedupe kept in Kafka: which messages each handler group
//! has processed, surviving restarts, on the topic
//! `<environment>._processed` (one partition).
//!
//! Owns [`KafkaDedupe`], herald's [`DedupeStore`] on Kafka. Kafka has no
//! lookup by key, so a store reads the topic into memory: a record per
//! processed id (headers: group, id, until when it counts), read from where
//! it left off. `seen` first reads up to the topic's end — one watermark
//! request when nothing new was written, so an id another process recorded
//! before this one asks is never missed — and `record` writes one and takes
//! it in at once when it is the next to read. Ids whose window ended are
//! dropped from memory as more come. Does not own reading records
//! (`log::read_records`) or when a layer asks (`herald::dedupe`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald::backend::{BoxFuture, DedupeStore};
use herald::Result;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio::sync::{Mutex, OnceCell};
use uuid::Uuid;

use crate::conn::Inner;
use crate::errors;
use crate::log::read_records;

/// The processed ids' header names.
const GROUP: &str = "herald_processed_group";
const ID: &str = "herald_processed_id";
const UNTIL: &str = "herald_processed_until_ms";

/// Ids kept in memory before those past their window are dropped.
const TIDY_AT: usize = 100_000;

/// Processed message ids on a Kafka topic, per group, for a window.
///
/// ```no_run
/// use std::time::Duration;
/// use herald::dedupe::Dedupe;
/// # async fn doc(store: herald_kafka::KafkaStore) -> herald::Result<()> {
/// let bus = herald::Bus::new(store.clone());
/// let handler = bus
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(store.dedupe(Duration::from_secs(24 * 3600))?));
/// # drop(handler);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaDedupe {
    inner: Arc<Inner>,
    window_ms: i64,
    made: Arc<OnceCell<()>>,
    read: Arc<Mutex<Read>>,
}

/// What this store has read of the topic.
#[derive(Default)]
struct Read {
    /// The next offset to read.
    next: i64,
    /// Until when each (group, id) counts, in ms since the epoch.
    ids: HashMap<(String, Uuid), i64>,
}

impl Read {
    fn take(&mut self, group: String, id: Uuid, until_ms: i64) {
        if self.ids.len() >= TIDY_AT {
            let now = chrono::Utc::now().timestamp_millis();
            self.ids.retain(|_, until| *until > now);
        }
        let until = self.ids.entry((group, id)).or_insert(until_ms);
        *until = (*until).max(until_ms);
    }
}

impl KafkaDedupe {
    /// A dedupe store on the brokers of `inner` remembering ids for
    /// `window` (1 ms – 7 days, as `HERALD_DEDUPE_WINDOW`).
    pub(crate) fn new(inner: Arc<Inner>, window: Duration) -> Result<KafkaDedupe> {
        Ok(KafkaDedupe {
            inner,
            window_ms: herald::backend::dedupe::window_ms(window)?,
            made: Arc::default(),
            read: Arc::default(),
        })
    }

    fn topic(&self) -> String {
        self.inner.config.kafka_topic("_processed")
    }

    /// The topic, made the first time.
    async fn made(&self) -> Result<()> {
        self.inner.check_open()?;
        self.made
            .get_or_try_init(|| async { self.inner.ensure_topic_with(&self.topic(), 1).await })
            .await
            .map(|_| ())
    }

    /// Read the topic up to its end into `read`.
    async fn catch_up(&self, read: &mut Read) -> Result<()> {
        let topic = self.topic();
        loop {
            let records = read_records(&self.inner, &topic, 0, read.next, 10_000).await?;
            let Some(last) = records.last().map(|r| r.offset) else {
                return Ok(());
            };
            for r in records {
                let get = |name: &str| {
                    r.headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                let (Some(group), Some(id), Some(until)) = (get(GROUP), get(ID), get(UNTIL)) else {
                    continue;
                };
                if let (Ok(id), Ok(until)) = (id.parse(), until.parse()) {
                    read.take(group.to_owned(), id, until);
                }
            }
            read.next = last + 1;
        }
    }
}

impl DedupeStore for KafkaDedupe {
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.made().await?;
            let mut read = self.read.lock().await;
            self.catch_up(&mut read).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let until = read.ids.get(&(group.to_owned(), id));
            Ok(until.is_some_and(|until| *until > now))
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.made().await?;
            let until = chrono::Utc::now()
                .timestamp_millis()
                .saturating_add(self.window_ms);
            let (id_text, until_text) = (id.to_string(), until.to_string());
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: GROUP,
                    value: Some(group.as_bytes()),
                })
                .insert(Header {
                    key: ID,
                    value: Some(id_text.as_bytes()),
                })
                .insert(Header {
                    key: UNTIL,
                    value: Some(until_text.as_bytes()),
                });
            let topic = self.topic();
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                .partition(0)
                .payload(&[][..])
                .headers(headers);
            let delivered = self
                .inner
                .producer
                .send(record, self.inner.config.timeout_duration())
                .await
                .map_err(|(e, _)| errors::kafka("record a processed id", &e))?;
            let mut read = self.read.lock().await;
            if delivered.offset == read.next {
                read.next += 1;
            }
            if delivered.offset < read.next {
                read.take(group.to_owned(), id, until);
            }
            Ok(())
        })
    }
}

impl std::fmt::Debug for KafkaDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDedupe")
            .field("topic", &self.topic())
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

//! Commands across processes over Kafka: request and reply topics.
//!
//! Owns [`export`] and [`call`] (`Transport::export_command` / `call`). A
//! process's handler of command `t` consumes `<environment>._commands.t`
//! in the Kafka group of the same name, so the instances of a service share
//! the calls. A caller sends the command there with headers `reply_to` (its
//! process's reply topic, `<environment>._replies.<uuid>`, made on its first
//! call and deleted when the store closes) and waits for the reply whose
//! `reply_for` is the command's `message_id`. Errors travel as
//! `error_code`/`error_message` headers on an empty reply. A serving
//! process registers the command in `<environment>._handlers` every 2 s
//! (each registration lasts 7 s; a withdrawn handler writes an expired
//! one), and a caller follows that topic: a command no live registration
//! names is `NOT_FOUND` at once. (Kafka's own group listing would say
//! whether the command's group has members, but not every Kafka-protocol
//! broker answers it.)
//! Latency: about two produce-and-fetch hops (compared with one round trip
//! on NATS), so a Kafka call costs milliseconds, not a fraction of one.
//!
//! What it keeps per store — the reply topic with its waiting calls, and
//! the registry — are `command_state`'s types in slots of `conn`'s `Inner`;
//! this module makes, follows and uses them. Sits just below `transport`,
//! which hands it the calls; it owns no subscription, topic administration
//! or start-position lookup (`tail::starts`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::backend::transport::{CommandExport, CommandServe};
use herald::backend::BoxFuture;
use herald::{Envelope, Error, ErrorCode, Result, Topic};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::codec::{self, Position};
use crate::command_state::{Registry, Replies, Reply};
use crate::conn::{client_config, Inner, LOOKUP_TIMEOUT};
use crate::errors;

/// The caller's reply topic.
pub const REPLY_TO: &str = "reply_to";
/// On a command: when its caller stops waiting (ms since the epoch); a
/// handler skips a command past it.
pub const DEADLINE: &str = "deadline_ms";
/// On a reply: the `message_id` of the command it answers.
pub const REPLY_FOR: &str = "reply_for";
/// On an error reply: the error's code.
pub const ERROR_CODE: &str = "error_code";
/// On an error reply: the error's message.
pub const ERROR_MESSAGE: &str = "error_message";

/// The Kafka topic of command `topic`.
fn command_topic(inner: &Inner, topic: &Topic) -> String {
    inner
        .config
        .kafka_topic(&format!("_commands.{}", topic.as_str()))
}

/// Serve this process's handler of `topic` to other processes until the
/// export drops.
pub(crate) fn export(inner: &Arc<Inner>, topic: &Topic, serve: CommandServe) -> CommandExport {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (inner, topic, flag) = (inner.clone(), topic.clone(), stop.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let name = command_topic(&inner, &topic);
        if let Err(e) = inner.ensure_topic_with(&name, 1).await {
            tracing::error!(%topic, error = %e, "cannot serve a command to other processes");
            return;
        }
        // Counted before it exists, so `close` waits until it is gone.
        let Ok(running) = inner.consumer_started() else {
            return;
        };
        let mut config = client_config(inner.config.consumer_properties(&name));
        // A call is answered or times out at its caller: its offset is
        // committed as it is read (at most once). A new group reads from the
        // start; calls past their deadline are skipped.
        config.set("enable.auto.commit", "true");
        config.set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = match config.create() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%topic, error = %e, "cannot serve a command to other processes");
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&name]) {
            tracing::error!(%topic, error = %e, "cannot serve a command to other processes");
            return;
        }
        let assigned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (renew_inner, renew_flag, renew_name) = (inner.clone(), flag.clone(), name.clone());
        let seen_assigned = assigned.clone();
        tokio::spawn(async move {
            // Registered once the consumer holds its partition, so a call
            // that finds the registration is read.
            let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT * 3;
            while !seen_assigned.load(std::sync::atomic::Ordering::Acquire)
                && tokio::time::Instant::now() < deadline
                && !renew_flag.load(std::sync::atomic::Ordering::Acquire)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            while !renew_flag.load(std::sync::atomic::Ordering::Acquire) && !renew_inner.is_closed()
            {
                let until =
                    chrono::Utc::now().timestamp_millis() + REGISTRATION_TTL.as_millis() as i64;
                if let Err(e) = register(&renew_inner, &renew_name, until).await {
                    tracing::warn!(command = %renew_name, error = %e, "Kafka: a command handler's registration was not renewed");
                }
                tokio::time::sleep(RENEW).await;
            }
            if !renew_inner.is_closed() {
                let _ = register(&renew_inner, &renew_name, 0).await;
            }
        });
        let _ = std::thread::Builder::new()
            .name("herald-kafka-commands".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Acquire) && !inner.is_closed() {
                    let polled = consumer.poll(Duration::from_millis(50));
                    if !assigned.load(std::sync::atomic::Ordering::Acquire)
                        && consumer.assignment().is_ok_and(|a| a.count() > 0)
                    {
                        assigned.store(true, std::sync::atomic::Ordering::Release);
                    }
                    let Some(Ok(m)) = polled else {
                        continue;
                    };
                    let headers = codec::pairs(m.headers());
                    let value = Bytes::copy_from_slice(m.payload().unwrap_or(&[]));
                    let at = Position {
                        partition: m.partition(),
                        offset: m.offset(),
                        time_ms: m.timestamp().to_millis().unwrap_or(0),
                    };
                    let (inner, topic, serve) = (inner.clone(), topic.clone(), serve.clone());
                    runtime.spawn(async move {
                        answer(&inner, topic, serve, headers, value, at).await;
                    });
                }
                // Leaves the command's group here, on the thread that polls.
                drop(consumer);
                drop(running);
            });
    });
    Box::new(Export(stop))
}

/// Stops serving a command when dropped.
struct Export(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Export {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

async fn answer(
    inner: &Inner,
    topic: Topic,
    serve: CommandServe,
    headers: Vec<(String, String)>,
    value: Bytes,
    at: Position,
) {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (Some(reply_to), Some(id)) = (get(REPLY_TO), get(codec::MESSAGE_ID)) else {
        return;
    };
    let late = get(DEADLINE)
        .and_then(|d| d.parse::<i64>().ok())
        .is_some_and(|d| d < chrono::Utc::now().timestamp_millis());
    if late {
        return;
    }
    let outcome = match codec::decode(topic, &headers, None, value, at) {
        Ok(command) => serve(command).await,
        Err(e) => Err(e),
    };
    let (mut out, body) = match outcome.and_then(|r| codec::encode(&r, inner.config.deliveries())) {
        Ok(r) => (r.headers, r.value),
        Err(e) => {
            let h = OwnedHeaders::new()
                .insert(Header {
                    key: ERROR_CODE,
                    value: Some(e.code().as_str().as_bytes()),
                })
                .insert(Header {
                    key: ERROR_MESSAGE,
                    value: Some(e.message().replace(['\r', '\n'], " ").as_bytes()),
                });
            (h, Bytes::new())
        }
    };
    out = out.insert(Header {
        key: REPLY_FOR,
        value: Some(id.as_bytes()),
    });
    let record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(&reply_to).payload(&body[..]).headers(out);
    // A caller that gave up does not hear the answer; nothing else to do.
    let _ = inner
        .producer
        .send(record, inner.config.timeout_duration())
        .await;
}

/// Call the handler of `command` in another process.
pub(crate) fn call(
    inner: &Arc<Inner>,
    command: Envelope,
    timeout: Duration,
) -> BoxFuture<'static, Result<Envelope>> {
    let inner = inner.clone();
    Box::pin(async move {
        inner.check_open()?;
        let topic = command.topic().clone();
        let name = command_topic(&inner, &topic);
        if !handled(&inner, &name).await? {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no handler is registered for command `{topic}`"),
            )
            .with_correlation_id(command.correlation_id()));
        }
        let replies = replies(&inner).await?;
        let id = command.id().to_string();
        let (tx, rx) = oneshot::channel();
        replies.waiting.lock().insert(id.clone(), tx);
        let record = codec::encode(&command, inner.config.deliveries())?;
        let deadline = chrono::Utc::now().timestamp_millis()
            + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let headers = record
            .headers
            .insert(Header {
                key: REPLY_TO,
                value: Some(replies.topic.as_bytes()),
            })
            .insert(Header {
                key: DEADLINE,
                value: Some(deadline.to_string().as_bytes()),
            });
        let send: FutureRecord<'_, str, [u8]> = FutureRecord::to(&name)
            .payload(&record.value[..])
            .headers(headers);
        let sent = inner.producer.send(send, timeout).await;
        if let Err((e, _)) = sent {
            replies.waiting.lock().remove(&id);
            return Err(errors::kafka(&format!("call `{topic}`"), &e));
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "Kafka: the store closed during a call",
                ))
            }
            Err(_) => {
                replies.waiting.lock().remove(&id);
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("command `{topic}` got no response within {timeout:?}"),
                )
                .with_correlation_id(command.correlation_id()));
            }
        };
        let get = |n: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        if let Some(code) = get(ERROR_CODE) {
            return Err(Error::new(
                code.parse().unwrap_or(ErrorCode::Internal),
                get(ERROR_MESSAGE).unwrap_or_default(),
            )
            .with_correlation_id(command.correlation_id()));
        }
        let at = Position {
            partition: 0,
            offset: reply.offset,
            time_ms: chrono::Utc::now().timestamp_millis(),
        };
        codec::decode(topic, &reply.headers, None, reply.value, at)
    })
}

/// Whether some process serves the command on Kafka topic `name`: a
/// registration of it has not expired.
async fn handled(inner: &Arc<Inner>, name: &str) -> Result<bool> {
    let registry = registry(inner).await?;
    let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
    while !registry
        .caught_up
        .load(std::sync::atomic::Ordering::Acquire)
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::Timeout,
                "Kafka: the command registry was not read in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let live = registry.live.lock();
    let served = live
        .get(name)
        .is_some_and(|procs| procs.values().any(|until| *until > now));
    Ok(served)
}

/// A handler's registration, renewed every [`RENEW`] while it serves.
#[derive(serde::Serialize, serde::Deserialize)]
struct Registration {
    command: String,
    process: String,
    until_ms: i64,
}

/// How often a serving process renews its registration.
const RENEW: Duration = Duration::from_secs(2);
/// How long a registration lasts unless renewed.
const REGISTRATION_TTL: Duration = Duration::from_secs(7);

fn registry_topic(inner: &Inner) -> String {
    inner.config.kafka_topic("_handlers")
}

/// Write a registration of command topic `name` by this process until
/// `until_ms` (0: withdrawn).
async fn register(inner: &Inner, name: &str, until_ms: i64) -> Result<()> {
    let topic = registry_topic(inner);
    inner.ensure_topic_with(&topic, 1).await?;
    let body = serde_json::to_vec(&Registration {
        command: name.to_owned(),
        process: inner.process.clone(),
        until_ms,
    })
    .map_err(|e| Error::internal(format!("encode a registration: {e}")))?;
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(name).payload(&body[..]);
    inner
        .producer
        .send(record, inner.config.timeout_duration())
        .await
        .map_err(|(e, _)| errors::kafka("register a command handler", &e))?;
    Ok(())
}

/// The registry, followed from a little before the longest registration
/// still live could have been written.
async fn registry(inner: &Arc<Inner>) -> Result<Arc<Registry>> {
    if let Some(r) = inner.registry.get() {
        return Ok(r.clone());
    }
    let _making = inner.replies_made.lock().await;
    if let Some(r) = inner.registry.get() {
        return Ok(r.clone());
    }
    let topic = registry_topic(inner);
    inner.ensure_topic_with(&topic, 1).await?;
    let since =
        chrono::Utc::now() - chrono::Duration::from_std(REGISTRATION_TTL * 2).unwrap_or_default();
    let start = crate::tail::starts(inner, &topic, 1, &herald::StartPosition::Time(since)).await?;
    let (_, high) = inner.watermarks(&topic, 0).await?;
    let running = inner.consumer_started()?;
    let config = client_config(inner.config.reader_properties());
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| errors::kafka("follow the command registry", &e))?;
    let mut tpl = TopicPartitionList::new();
    let from = start.first().map_or(Offset::Beginning, |(_, o)| *o);
    tpl.add_partition_offset(&topic, 0, from)
        .map_err(|e| errors::kafka("follow the command registry", &e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| errors::kafka("follow the command registry", &e))?;
    let registry = Arc::new(Registry {
        live: Mutex::new(HashMap::new()),
        caught_up: std::sync::atomic::AtomicBool::new(
            matches!(from, Offset::Offset(o) if o >= high),
        ),
    });
    let (weak_inner, follow) = (Arc::downgrade(inner), registry.clone());
    std::thread::Builder::new()
        .name("herald-kafka-registry".into())
        .spawn(move || {
            while weak_inner.upgrade().is_some_and(|i| !i.is_closed()) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                if m.offset() + 1 >= high {
                    follow
                        .caught_up
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                let Some(r) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Registration>(p).ok())
                else {
                    continue;
                };
                follow
                    .live
                    .lock()
                    .entry(r.command)
                    .or_default()
                    .insert(r.process, r.until_ms);
            }
            drop(consumer);
            drop(running);
        })
        .map_err(|e| Error::internal(format!("start a registry thread: {e}")))?;
    let _ = inner.registry.set(registry.clone());
    Ok(registry)
}

/// This process's reply topic, made and followed on first use.
async fn replies(inner: &Arc<Inner>) -> Result<Arc<Replies>> {
    if let Some(r) = inner.replies.get() {
        return Ok(r.clone());
    }
    let _making = inner.replies_made.lock().await;
    if let Some(r) = inner.replies.get() {
        return Ok(r.clone());
    }
    let topic = inner
        .config
        .kafka_topic(&format!("_replies.{}", uuid::Uuid::now_v7().simple()));
    inner.ensure_topic_with(&topic, 1).await?;
    let running = inner.consumer_started()?;
    let config = client_config(inner.config.reader_properties());
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| errors::kafka("follow the reply topic", &e))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .map_err(|e| errors::kafka("follow the reply topic", &e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| errors::kafka("follow the reply topic", &e))?;
    let replies = Arc::new(Replies {
        topic,
        waiting: Mutex::new(HashMap::new()),
    });
    let (weak_inner, follow) = (Arc::downgrade(inner), replies.clone());
    std::thread::Builder::new()
        .name("herald-kafka-replies".into())
        .spawn(move || {
            while weak_inner.upgrade().is_some_and(|i| !i.is_closed()) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let headers = codec::pairs(m.headers());
                let Some(id) = headers
                    .iter()
                    .find(|(k, _)| k == REPLY_FOR)
                    .map(|(_, v)| v.clone())
                else {
                    continue;
                };
                if let Some(tx) = follow.waiting.lock().remove(&id) {
                    let _ = tx.send(Reply {
                        headers,
                        value: Bytes::copy_from_slice(m.payload().unwrap_or(&[])),
                        offset: m.offset(),
                    });
                }
            }
            drop(consumer);
            drop(running);
        })
        .map_err(|e| Error::internal(format!("start a reply thread: {e}")))?;
    let _ = inner.replies.set(replies.clone());
    Ok(replies)
}

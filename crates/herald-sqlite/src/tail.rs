//! Subscriptions without a group: a task tails the log into a delivery queue.
//!
//! Owns the tail task: it reads committed events in commit order (`pos`),
//! keeps those the subscription wants from its start position on, and feeds
//! them to a [`herald::queue::Queue`], which does the delivering (priority,
//! redelivery, ack deadlines, dead letters). A full queue makes the tail wait;
//! publishers never wait for subscribers, and nothing is lost: the log holds
//! it. These subscriptions commit nothing (they are ephemeral); consumer
//! groups are durable and live in `group`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald::queue::{self, Queue, QueueHost};
use herald::{Envelope, Error, Result, StartPosition, SubscribeSpec, Subscription};

use crate::store::{decode_stored, max_pos, runtime_error, Inner};

/// Events read per query.
const PAGE: i64 = 256;
/// How often an idle tail checks that its subscription is still open.
const IDLE_CHECK: Duration = Duration::from_millis(250);

pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(crate::append::closed());
    }
    if spec.patterns.is_empty() {
        return Err(Error::validation(
            "a subscription needs at least one pattern",
        ));
    }
    if spec.start == StartPosition::Seq(0) {
        return Err(Error::validation("start seq must be at least 1"));
    }
    if spec.buffer == 0 || spec.buffer > 1_000_000 {
        return Err(Error::validation(format!(
            "subscription buffer {} is out of range 1..=1000000",
            spec.buffer
        )));
    }
    if spec.group.is_some() {
        return crate::group::subscribe(inner, spec).await;
    }
    let cursor = match spec.start {
        StartPosition::Latest => max_pos(inner.readers.clone()).await?,
        _ => 0,
    };
    let host: Weak<dyn QueueHost> = Arc::downgrade(inner) as Weak<Inner>;
    let queue = Queue::new(spec, host);
    queue.join();
    inner
        .queues
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&queue));
    tokio::spawn(tail(inner.clone(), queue.clone(), cursor));
    Ok(queue::member(queue))
}

async fn tail(inner: Arc<Inner>, queue: Arc<Queue>, mut cursor: i64) {
    let spec = queue.spec().clone();
    let topics: Option<Vec<String>> = spec
        .patterns
        .iter()
        .map(|p| p.is_literal().then(|| p.as_str().to_owned()))
        .collect();
    let mut committed = inner.committed.clone();
    loop {
        if queue.is_closed() {
            return;
        }
        if inner.closed.load(Ordering::Acquire) {
            queue.close();
            return;
        }
        committed.borrow_and_update();
        let rows = match page(&inner, cursor, topics.as_deref()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "a subscription could not read the log; retrying");
                tokio::time::sleep(IDLE_CHECK).await;
                continue;
            }
        };
        if rows.is_empty() {
            if let Ok(Err(_)) = tokio::time::timeout(IDLE_CHECK, committed.changed()).await {
                // The writer is gone (the store is closing): check again later.
                tokio::time::sleep(IDLE_CHECK).await;
            }
            continue;
        }
        let mut wanted = Vec::with_capacity(rows.len());
        for (pos, bytes) in rows {
            cursor = pos;
            let env = match decode_stored(&bytes) {
                Ok(env) => env,
                Err(e) => {
                    tracing::error!(pos, error = %e, "skipping an undecodable stored event");
                    continue;
                }
            };
            if spec.wants(env.topic().as_str(), env.kind()) && from_start(&spec.start, &env) {
                wanted.push(Arc::new(env));
            }
        }
        if !queue.push(wanted).await {
            return;
        }
    }
}

fn from_start(start: &StartPosition, env: &Envelope) -> bool {
    match start {
        StartPosition::Seq(n) => env.seq().is_some_and(|s| s >= *n),
        StartPosition::Time(t) => env.timestamp().timestamp_millis() >= t.timestamp_millis(),
        StartPosition::Earliest | StartPosition::Latest => true,
    }
}

async fn page(inner: &Inner, after: i64, topics: Option<&[String]>) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut q = sqlx::QueryBuilder::new("SELECT pos, envelope FROM events WHERE pos > ");
    q.push_bind(after);
    if let Some(topics) = topics {
        q.push(" AND topic IN (");
        let mut list = q.separated(", ");
        for t in topics {
            list.push_bind(t.as_str());
        }
        q.push(")");
    }
    q.push(" ORDER BY pos LIMIT ");
    q.push_bind(PAGE);
    q.build_query_as()
        .fetch_all(&inner.readers)
        .await
        .map_err(runtime_error)
}

//! Dead letters on NATS: one stream, one message per letter.
//!
//! Owns the dead-letter stream ([`prepare`], made when the store opens),
//! writing a dead letter (subject `P.$dlq.<topic>`: the body is the
//! envelope's wire-format JSON, seq and attempt included; the failure
//! metadata travels in `Herald-Dead-*` headers, so a plain client can read
//! both), and listing and purging them; a letter's id is its sequence in the
//! dead-letter stream. It also makes the store (`Inner`) the host of its
//! queues: their dead letters come here, whether a group-less
//! subscription's queue or a group leader's (which hands its letters to the
//! store's host). JetStream has no dead-letter queue of its own: a group
//! writes the letter and only then terms the original (`group`). Reading
//! what happened to one event is `inspect`'s.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use herald::backend::dead_lettering::DeadLetterWrites;
use herald::backend::queue::QueueHost;
use herald::backend::{select_pages, BoxFuture, DeadLetterRow};
use herald::{DeadLetter, DeadLetterFilter, ErrorCode, Result};

use crate::conn::Inner;
use crate::errors;

const GROUP: &str = "Herald-Dead-Group";
const CODE: &str = "Herald-Dead-Code";
const REASON: &str = "Herald-Dead-Reason";
const ATTEMPTS: &str = "Herald-Dead-Attempts";
const SOURCE: &str = "Herald-Dead-Source";
const FIRST_FAILED: &str = "Herald-Dead-First-Failed-Ms";
const FAILED: &str = "Herald-Dead-Failed-Ms";

/// Letters read per page when listing.
const PAGE: usize = 256;

/// Make sure the dead-letter stream exists.
pub(crate) async fn prepare(inner: &Inner) -> Result<()> {
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
    Ok(())
}

/// Write `letter` to the dead-letter stream; `Ok` once the server has it.
/// A store whose dead letters are off discards it instead (logged and
/// counted).
pub(crate) async fn write(inner: &Inner, letter: &DeadLetter) -> Result<()> {
    inner.check_open()?;
    if inner.discards.discard(letter) {
        return Ok(());
    }
    let body = letter.envelope.to_json()?;
    let mut headers = HeaderMap::new();
    if let Some(g) = &letter.group {
        headers.insert(GROUP, g.as_str());
    }
    headers.insert(CODE, letter.code.as_str());
    headers.insert(REASON, one_line(&letter.reason).as_str());
    headers.insert(ATTEMPTS, letter.attempts.to_string());
    headers.insert(SOURCE, letter.source.as_str());
    headers.insert(
        FIRST_FAILED,
        letter.first_failed_at.timestamp_millis().to_string(),
    );
    headers.insert(FAILED, letter.failed_at.timestamp_millis().to_string());
    let subject = inner.names.dlq_subject(letter.envelope.topic().as_str());
    let ack = inner
        .js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| errors::publish("the dead letters", e))?;
    ack.await
        .map_err(|e| errors::publish("the dead letters", e))?;
    Ok(())
}

/// Header values are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The letters `filter` selects, oldest first.
pub(crate) async fn list(inner: &Arc<Inner>, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
    inner.check_open()?;
    select_pages(filter, |after| page(inner, after)).await
}

/// Delete the letters `filter` selects; how many.
pub(crate) async fn purge(inner: &Arc<Inner>, filter: &DeadLetterFilter) -> Result<u64> {
    let doomed = list(inner, filter).await?;
    let stream = inner
        .js
        .get_stream_no_info(inner.names.dlq_stream())
        .await
        .map_err(|e| errors::nats(ErrorCode::Unavailable, "open the dead letters", e))?;
    let mut purged = 0;
    for d in doomed {
        match stream.delete_message(d.id).await {
            Ok(true) => purged += 1,
            Ok(false) => {}
            Err(e) => {
                return Err(errors::nats(
                    ErrorCode::Unavailable,
                    "delete a dead letter",
                    e,
                ))
            }
        }
    }
    Ok(purged)
}

/// Up to [`PAGE`] letters after stream sequence `after`.
async fn page(inner: &Inner, after: i64) -> Result<Vec<DeadLetterRow>> {
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(ErrorCode::Unavailable, "read the dead letters", e)
    };
    let mut stream = inner
        .js
        .get_stream(inner.names.dlq_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| unavailable(&e))?
        .state
        .last_sequence;
    let from = after.max(0) as u64 + 1;
    if last < from {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    // A fetch ends with what there is (letters may have been deleted up to
    // the stream's last sequence).
    let mut messages = consumer
        .fetch()
        .max_messages(PAGE)
        .messages()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut rows = Vec::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| unavailable(&e))?;
        let info = msg.info().map_err(|e| unavailable(&e))?;
        rows.push(row(
            info.stream_sequence,
            msg.headers.as_ref(),
            &msg.payload,
        ));
    }
    // The consumer goes with its inactivity; deleting it now spares the server.
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(rows)
}

fn row(seq: u64, headers: Option<&HeaderMap>, body: &[u8]) -> DeadLetterRow {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let ms = |name: &str| get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        seq.min(i64::MAX as u64) as i64,
        get(GROUP),
        get(CODE).unwrap_or_default(),
        get(REASON).unwrap_or_default(),
        get(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
        get(SOURCE).unwrap_or_default(),
        ms(FIRST_FAILED),
        ms(FAILED),
        body.to_vec(),
    )
}

/// The store hosts its queues: a group-less subscription's, and (through
/// the leader's own host) a group leader's.
impl QueueHost for Inner {
    fn max_deliver(&self) -> u32 {
        self.config.deliveries()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'static, Result<()>> {
        let this = self.this.clone();
        Box::pin(async move {
            let inner = this.upgrade().ok_or_else(errors::closed)?;
            write(&inner, &letter).await
        })
    }

    fn dead_letter_writes(&self) -> &DeadLetterWrites {
        &self.dead_letter_writes
    }
}

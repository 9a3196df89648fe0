//! The lease of a part of a consumer group: at most one process reads a
//! part (a partition of the group's topics, or their plain subjects), and
//! it loses the part when it stops renewing. (Not a delivery lease: those
//! are the reader's queue's ack deadlines; see the glossary in
//! ARCHITECTURE.md.)
//!
//! Owns [`Lease`]. A lease is the last message on subject `P.$lease.<name>`
//! of stream `S_LEADERS` (one message per subject, `max_age` the lease's
//! time to live). Taking it publishes with
//! `Nats-Expected-Last-Subject-Sequence: 0` (no holder), renewing it with the
//! sequence of the holder's last renewal, so the server decides between two
//! takers; a holder that stops renewing loses it when its message ages out.
//! (This is what JetStream KV does with `create` and `update`, on a stream
//! of herald's own so it works on every 2.9 server.) It sits on `conn`;
//! when to take, renew and give up a lease is `group`'s.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use herald::{ErrorCode, Result};

use crate::conn::Inner;
use crate::errors;

/// A lease this process holds.
pub(crate) struct Lease {
    subject: String,
    holder: String,
    /// The stream sequence of the last renewal.
    seq: u64,
}

/// What taking or renewing a lease found.
pub(crate) enum Taken {
    /// Ours.
    Held(Lease),
    /// Someone else holds it.
    Busy,
}

impl Lease {
    /// Make sure the lease stream exists (leases live `ttl`).
    pub(crate) async fn prepare(inner: &Inner, ttl: Duration) -> Result<()> {
        let config = stream::Config {
            name: inner.names.leases_stream(),
            subjects: vec![inner.names.lease_subjects()],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl,
            storage: stream::StorageType::File,
            num_replicas: inner.config.replica_count(),
            ..Default::default()
        };
        inner
            .js
            .create_or_update_stream(config)
            .await
            .map_err(|e| errors::nats(ErrorCode::Unavailable, "make the lease stream", e))?;
        Ok(())
    }

    /// Take lease `name` for `holder` if nobody else holds it (a lease
    /// `holder` already holds — its renewal's ack lost, say — is taken back).
    pub(crate) async fn take(inner: &Inner, name: &str, holder: &str) -> Result<Taken> {
        let subject = inner.names.lease_subject(name);
        if let Some(seq) = publish(inner, &subject, holder, 0).await? {
            return Ok(Taken::Held(Lease {
                subject,
                holder: holder.to_owned(),
                seq,
            }));
        }
        let Ok(s) = inner
            .js
            .get_stream_no_info(inner.names.leases_stream())
            .await
        else {
            return Ok(Taken::Busy);
        };
        match s.get_last_raw_message_by_subject(&subject).await {
            Ok(last) if last.payload == holder.as_bytes() => {
                let mut lease = Lease {
                    subject,
                    holder: holder.to_owned(),
                    seq: last.sequence,
                };
                match lease.renew(inner).await? {
                    true => Ok(Taken::Held(lease)),
                    false => Ok(Taken::Busy),
                }
            }
            _ => Ok(Taken::Busy),
        }
    }

    /// Renew; `Ok(false)` when the lease was lost to someone else.
    pub(crate) async fn renew(&mut self, inner: &Inner) -> Result<bool> {
        match publish(inner, &self.subject, &self.holder, self.seq).await? {
            Some(seq) => {
                self.seq = seq;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Give the lease up now.
    pub(crate) async fn release(self, inner: &Inner) {
        let Ok(s) = inner
            .js
            .get_stream_no_info(inner.names.leases_stream())
            .await
        else {
            return;
        };
        // A release that fails ends when the lease ages out.
        let _ = s.purge().filter(&self.subject).await;
    }
}

/// Publish `holder` to `subject` if its last message is at `expected` (0:
/// none); the new sequence, or `None` when it is not.
async fn publish(inner: &Inner, subject: &str, holder: &str, expected: u64) -> Result<Option<u64>> {
    let message = jetstream::message::PublishMessage::build()
        .payload(holder.to_owned().into())
        .expected_last_subject_sequence(expected);
    let ack = inner
        .js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|e| errors::publish("a lease", e))?;
    match ack.await {
        Ok(ack) => Ok(Some(ack.sequence)),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(None),
        Err(e) => Err(errors::publish("a lease", e)),
    }
}

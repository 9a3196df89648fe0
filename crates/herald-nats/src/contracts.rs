//! The store's contracts: [`NatsSchemas`], herald's `SchemaStore` on the
//! stream `S_SCHEMAS`.
//!
//! Every change is one message on the one subject `P.$schemas`: a version
//! registered (with the subject's settings as they then are) or a subject
//! deleted. The subjects are what those messages add up to, read from the
//! stream's start. A change is published only if the subject's last
//! message is still the one the change was decided on
//! (`Nats-Expected-Last-Subject-Sequence`); when another process changed
//! the registry meanwhile the change is decided again on the new state. So
//! registrations from any number of processes are serialized, versions
//! stay gap-free and none is lost, and each is on the server before `Ok`.
//! The store keeps what it last read with the stream's last sequence
//! then, and reads again only when the stream has grown.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use herald::backend::schemas::{
    apply, no_subject, Compatibility, Registration, SchemaStore, SchemaVersion, Subject,
};
use herald::backend::BoxFuture;
use herald::{Error, ErrorCode, Pattern, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::conn::Inner;
use crate::errors;

/// Changes decided again after another process's before one gives up.
const RACES: usize = 32;

/// One change to the registry, as a message.
#[derive(Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
enum Change {
    /// A version registered, or the latest restated with new settings.
    Registered {
        pattern: Pattern,
        owner: Option<String>,
        description: Option<String>,
        compatibility: Compatibility,
        version: u32,
        schema: serde_json::Value,
        registered_ms: i64,
    },
    /// A subject and its versions deleted.
    Deleted { pattern: Pattern },
}

/// The store's schema registry ([`Bus::schemas`](herald::Bus::schemas) on a
/// bus over it).
#[derive(Clone)]
pub struct NatsSchemas {
    inner: Arc<Inner>,
}

impl NatsSchemas {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        NatsSchemas { inner }
    }

    fn unavailable(doing: &str, e: impl std::fmt::Display) -> Error {
        errors::nats(ErrorCode::Unavailable, doing, e)
    }

    /// The registry's stream, made if it is not there.
    async fn stream(&self) -> Result<stream::Stream> {
        let inner = &self.inner;
        inner.check_open()?;
        let config = stream::Config {
            name: inner.names.schemas_stream(),
            subjects: vec![inner.names.schemas_subject()],
            storage: stream::StorageType::File,
            num_replicas: inner.config.replica_count(),
            ..Default::default()
        };
        inner
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| Self::unavailable("make the schema registry's stream", e))
    }

    /// The subjects, and the stream sequence of the last change (0 for
    /// none).
    async fn read(&self) -> Result<(Vec<Subject>, u64)> {
        let stream = self.stream().await?;
        // The stream's info, not a read, when nothing changed since the
        // last read (the bus's guard asks every second).
        let end = stream.cached_info().state.last_sequence;
        let cache = || self.inner.schemas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, subjects)) = &*cache() {
            if *at == end {
                return Ok((subjects.clone(), end));
            }
        }
        let messages =
            crate::log::read(&self.inner, &stream, DeliverPolicy::All, usize::MAX).await?;
        let mut subjects: Vec<Subject> = Vec::new();
        let mut last = 0;
        for msg in messages {
            if let Ok(info) = msg.info() {
                last = info.stream_sequence;
            }
            let change: Change = serde_json::from_slice(&msg.payload).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("a schema registry message herald cannot read: {e}"),
                )
            })?;
            match change {
                Change::Deleted { pattern } => subjects.retain(|s| s.pattern != pattern),
                Change::Registered {
                    pattern,
                    owner,
                    description,
                    compatibility,
                    version,
                    schema,
                    registered_ms,
                } => {
                    let at = match subjects.iter().position(|s| s.pattern == pattern) {
                        Some(i) => i,
                        None => {
                            subjects.push(Subject::stored(pattern, None, None, compatibility));
                            subjects.len() - 1
                        }
                    };
                    let subject = &mut subjects[at];
                    subject.owner = owner;
                    subject.description = description;
                    subject.compatibility = compatibility;
                    if subject.version(version).is_none() {
                        let when = chrono::DateTime::from_timestamp_millis(registered_ms)
                            .unwrap_or_default();
                        subject
                            .versions
                            .push(SchemaVersion::new(version, schema, when));
                    }
                }
            }
        }
        subjects.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
        *cache() = Some((end, subjects.clone()));
        Ok((subjects, last))
    }

    /// Publish `change` if the registry's last change is still `last`;
    /// `false` when another came first.
    async fn publish(&self, change: &Change, last: u64) -> Result<bool> {
        let body = serde_json::to_vec(change)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("a schema change: {e}")))?;
        let max = self.inner.client.server_info().max_payload;
        if body.len() + 1024 > max {
            return Err(Error::validation(format!(
                "this schema change is {} bytes; the NATS server takes messages up to {max}",
                body.len()
            )));
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .expected_last_subject_sequence(last);
        let sent = self
            .inner
            .js
            .send_publish(self.inner.names.schemas_subject(), message)
            .await;
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(Self::unavailable("write to the schema registry", e)),
        }
    }

    /// Decide a change on the registry as it is, and publish it unless
    /// another process changed the registry first (then decide again).
    async fn change<T>(
        &self,
        decide: impl Fn(Vec<Subject>) -> Result<(Option<Change>, T)>,
    ) -> Result<T> {
        for _ in 0..RACES {
            let (subjects, last) = self.read().await?;
            let (change, answer) = decide(subjects)?;
            let Some(change) = change else {
                return Ok(answer);
            };
            if self.publish(&change, last).await? {
                return Ok(answer);
            }
        }
        Err(Error::new(
            ErrorCode::Unavailable,
            format!("the schema registry changed under {RACES} attempts in a row; try again"),
        ))
    }
}

impl SchemaStore for NatsSchemas {
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>> {
        Box::pin(async move { self.read().await.map(|(subjects, _)| subjects) })
    }

    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>> {
        Box::pin(self.change(move |mut subjects| {
            let before = subjects
                .iter()
                .find(|s| s.pattern == registration.pattern)
                .cloned();
            let version = apply(&mut subjects, &registration)?;
            let subject = subjects
                .iter()
                .find(|s| s.pattern == registration.pattern)
                .ok_or_else(|| no_subject(&registration.pattern))?;
            let unchanged = before.as_ref().is_some_and(|b| {
                b.versions.len() == subject.versions.len()
                    && b.owner == subject.owner
                    && b.description == subject.description
                    && b.compatibility == subject.compatibility
            });
            let change = (!unchanged).then(|| Change::Registered {
                pattern: subject.pattern.clone(),
                owner: subject.owner.clone(),
                description: subject.description.clone(),
                compatibility: subject.compatibility,
                version: version.version,
                schema: version.schema.clone(),
                registered_ms: version.registered_at.timestamp_millis(),
            });
            Ok((change, version))
        }))
    }

    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.change(move |subjects| {
            if !subjects.iter().any(|s| &s.pattern == pattern) {
                return Err(no_subject(pattern));
            }
            let change = Change::Deleted {
                pattern: pattern.clone(),
            };
            Ok((Some(change), ()))
        }))
    }
}

impl std::fmt::Debug for NatsSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSchemas")
            .field("stream", &self.inner.names.schemas_stream())
            .finish()
    }
}

//! The store's contracts: [`KafkaSchemas`], herald's `SchemaStore` on the
//! one-partition, compacted topic `<environment>._schemas`.
//!
//! Kafka has no conditional write, so the topic is a log of *proposals*
//! (register this schema, delete this subject), each under a key of its
//! own (so compaction keeps every one), and the registry is what the
//! proposals add up to, decided in offset order by every reader alike: a
//! proposal that the registry as it stood at its offset refuses changes
//! nothing. A process that proposes reads the topic up to its proposal's
//! offset and answers what was decided there — the version it got, or
//! why it was refused — so registrations from any number of processes are
//! serialized by the partition, versions stay gap-free and none is lost,
//! and each is on the brokers before `Ok`. A new version's time is its
//! proposal's, so every reader agrees on it. The store keeps what it last
//! read with the topic's end offset then, and reads again only when the
//! topic has grown.

use std::sync::Arc;

use herald::backend::schemas::{
    apply_at, check_schema, no_subject, Compatibility, Registration, SchemaStore, SchemaVersion,
    Subject,
};
use herald::backend::BoxFuture;
use herald::{Error, ErrorCode, Pattern, Result};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conn::Inner;
use crate::errors;

/// The registry's topic, under the environment.
pub(crate) const SCHEMAS_TOPIC: &str = "_schemas";

/// One proposal, as a record's value.
#[derive(Serialize, Deserialize)]
#[serde(tag = "propose", rename_all = "snake_case")]
enum Proposal {
    Register {
        pattern: Pattern,
        schema: serde_json::Value,
        owner: Option<String>,
        description: Option<String>,
        compatibility: Option<Compatibility>,
        at_ms: i64,
    },
    Delete {
        pattern: Pattern,
    },
}

/// What one proposal decided.
enum Decided {
    Registered(SchemaVersion),
    Deleted,
}

/// The store's schema registry ([`Bus::schemas`](herald::Bus::schemas) on a
/// bus over it).
#[derive(Clone)]
pub struct KafkaSchemas {
    inner: Arc<Inner>,
}

impl KafkaSchemas {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        KafkaSchemas { inner }
    }

    async fn topic(&self) -> Result<String> {
        self.inner.check_open()?;
        let topic = self.inner.config.kafka_topic(SCHEMAS_TOPIC);
        self.inner
            .ensure_topic_configured(&topic, 1, &[("cleanup.policy", "compact")])
            .await?;
        Ok(topic)
    }

    /// Add the proposals up, through offset `through` (all, for `None`):
    /// the registry, and what the proposal at `through` decided.
    async fn fold(&self, through: Option<i64>) -> Result<(Vec<Subject>, Option<Result<Decided>>)> {
        let topic = self.topic().await?;
        let records = crate::log::read_records(&self.inner, &topic, 0, 0, usize::MAX).await?;
        let mut subjects = Vec::new();
        let mut last = None;
        for r in records {
            if through.is_some_and(|t| r.offset > t) {
                break;
            }
            let proposal: Proposal = serde_json::from_slice(&r.value).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!(
                        "a schema proposal herald cannot read at offset {}: {e}",
                        r.offset
                    ),
                )
            })?;
            let decided = decide(&mut subjects, proposal);
            if through == Some(r.offset) {
                last = Some(decided);
            }
        }
        Ok((subjects, last))
    }

    /// Propose `proposal` and answer what the registry decided of it.
    async fn propose(&self, proposal: &Proposal) -> Result<Decided> {
        let topic = self.topic().await?;
        let body = serde_json::to_vec(proposal)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("a schema proposal: {e}")))?;
        let key = Uuid::now_v7().to_string();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
            .key(key.as_str())
            .payload(&body[..]);
        let offset = self
            .inner
            .producer
            .send(record, self.inner.config.timeout_duration())
            .await
            .map_err(|(e, _)| errors::kafka("write to the schema registry", &e))?
            .offset;
        if offset < 0 {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "Kafka: the broker acknowledged a schema proposal without its offset",
            ));
        }
        match self.fold(Some(offset)).await?.1 {
            Some(decided) => decided,
            None => Err(Error::new(
                ErrorCode::Unavailable,
                format!("Kafka: the schema proposal at offset {offset} was not read back"),
            )),
        }
    }
}

/// Decide `proposal` on `subjects` (every reader alike).
fn decide(subjects: &mut Vec<Subject>, proposal: Proposal) -> Result<Decided> {
    match proposal {
        Proposal::Register {
            pattern,
            schema,
            owner,
            description,
            compatibility,
            at_ms,
        } => {
            let mut registration = Registration::new(pattern, schema);
            registration.owner = owner;
            registration.description = description;
            registration.compatibility = compatibility;
            let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
            apply_at(subjects, &registration, at).map(Decided::Registered)
        }
        Proposal::Delete { pattern } => {
            let before = subjects.len();
            subjects.retain(|s| s.pattern != pattern);
            if subjects.len() == before {
                return Err(no_subject(&pattern));
            }
            Ok(Decided::Deleted)
        }
    }
}

impl SchemaStore for KafkaSchemas {
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>> {
        Box::pin(async move {
            // A watermark request instead of a read when nothing was
            // proposed since the last read (the bus's guard asks every
            // second).
            let topic = self.topic().await?;
            let (_, end) = self.inner.watermarks(&topic, 0).await?;
            if let Some((at, subjects)) = &*self.inner.schemas.lock() {
                if *at == end {
                    return Ok(subjects.clone());
                }
            }
            let (mut subjects, _) = self.fold(None).await?;
            subjects.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
            *self.inner.schemas.lock() = Some((end, subjects.clone()));
            Ok(subjects)
        })
    }

    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>> {
        Box::pin(async move {
            // Refused before it is proposed when it would be anyway.
            check_schema(&registration.schema)?;
            let proposal = Proposal::Register {
                pattern: registration.pattern,
                schema: registration.schema,
                owner: registration.owner,
                description: registration.description,
                compatibility: registration.compatibility,
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            match self.propose(&proposal).await? {
                Decided::Registered(version) => Ok(version),
                Decided::Deleted => Err(Error::internal("a registration decided as a deletion")),
            }
        })
    }

    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (subjects, _) = self.fold(None).await?;
            if !subjects.iter().any(|s| &s.pattern == pattern) {
                return Err(no_subject(pattern));
            }
            let proposal = Proposal::Delete {
                pattern: pattern.clone(),
            };
            self.propose(&proposal).await.map(drop)
        })
    }
}

impl std::fmt::Debug for KafkaSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSchemas")
            .field("topic", &self.inner.config.kafka_topic(SCHEMAS_TOPIC))
            .finish()
    }
}

//! A consumer group's record: its name, patterns and where it started when
//! it was made.
//!
//! Owns [`Record`] and its stream: each process that reads a group writes
//! the record as it starts ([`record`]; the last message on
//! `P.$groups.<consumer>` of stream `S_GROUPS`), the next one reads
//! where the group started ([`made_at`]: a group's start is fixed when it
//! is made, DESIGN.md §4.5), and `inspect` lists groups by their records
//! ([`list`]). It sits on `conn` and `log`; leading a group is `group`'s,
//! a group's offsets and lag `inspect`'s.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream;
use herald::{ErrorCode, Result, StartPosition, SubscribeSpec};
use serde::{Deserialize, Serialize};

use crate::conn::Inner;
use crate::errors;

/// A consumer group as its readers record it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) group: String,
    /// Its patterns, as `herald::backend::group::patterns_text` writes them.
    pub(crate) patterns: String,
    /// Where the group started when it was made (records written before
    /// herald kept it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<Start>,
}

/// A group's start position in its record.
#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(tag = "at", rename_all = "snake_case")]
enum Start {
    Earliest,
    Latest,
    Seq { seq: u64 },
    Time { ms: i64 },
}

impl From<StartPosition> for Start {
    fn from(start: StartPosition) -> Self {
        match start {
            StartPosition::Earliest => Start::Earliest,
            StartPosition::Latest => Start::Latest,
            StartPosition::Seq(seq) => Start::Seq { seq },
            StartPosition::Time(t) => Start::Time {
                ms: t.timestamp_millis(),
            },
        }
    }
}

impl From<Start> for StartPosition {
    fn from(start: Start) -> Self {
        match start {
            Start::Earliest => StartPosition::Earliest,
            Start::Latest => StartPosition::Latest,
            Start::Seq { seq } => StartPosition::Seq(seq),
            Start::Time { ms } => {
                StartPosition::Time(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
            }
        }
    }
}

/// Every group's record, by name (those herald cannot read are skipped).
pub(crate) async fn list(inner: &Inner) -> Result<Vec<Record>> {
    let registry = match inner.js.get_stream(inner.names.groups_stream()).await {
        Ok(s) => s,
        Err(e) if errors::is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(errors::nats(
                ErrorCode::Unavailable,
                "read the group records",
                e,
            ))
        }
    };
    let mut records = Vec::new();
    for msg in crate::log::read(inner, &registry, DeliverPolicy::All, usize::MAX).await? {
        match serde_json::from_slice::<Record>(&msg.payload) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "skipping a group record herald cannot read")
            }
        }
    }
    records.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(records)
}

/// Where `group` started when it was made, from its record; `None` when it
/// has none (the group is new). A record from before herald kept the start
/// gives `spec`'s.
pub(crate) async fn made_at(
    inner: &Inner,
    group: &str,
    spec: &SubscribeSpec,
) -> Result<Option<StartPosition>> {
    let unavailable = |e: &dyn std::fmt::Display| {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("read the record of consumer group {group:?}"),
            e,
        )
    };
    let registry = match inner.js.get_stream(inner.names.groups_stream()).await {
        Ok(s) => s,
        Err(e) if errors::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(unavailable(&e)),
    };
    let subject = inner.names.group_subject(&inner.names.consumer(group));
    let msg = match registry.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(unavailable(&e)),
    };
    let record: Record = serde_json::from_slice(&msg.payload).map_err(|e| unavailable(&e))?;
    Ok(Some(record.start.map_or(spec.start, StartPosition::from)))
}

/// Record `group`, following `spec`'s patterns from `start` (where it
/// started when it was made), for [`list`] to list and its later leaders
/// to start from.
pub(crate) async fn record(
    inner: &Inner,
    group: &str,
    spec: &SubscribeSpec,
    start: StartPosition,
) -> Result<()> {
    let config = stream::Config {
        name: inner.names.groups_stream(),
        subjects: vec![inner.names.group_subjects()],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: inner.config.replica_count(),
        ..Default::default()
    };
    let record = Record {
        group: group.to_owned(),
        patterns: herald::backend::group::patterns_text(spec),
        start: Some(start.into()),
    };
    let written = async {
        inner.js.create_or_update_stream(config).await?;
        let subject = inner.names.group_subject(&inner.names.consumer(group));
        let body = serde_json::to_vec(&record)?;
        inner.js.publish(subject, body.into()).await?.await?;
        Ok::<_, async_nats::Error>(())
    };
    written.await.map_err(|e| {
        errors::nats(
            ErrorCode::Unavailable,
            &format!("record consumer group {group:?}"),
            e,
        )
    })
}

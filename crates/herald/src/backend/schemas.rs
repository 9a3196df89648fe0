//! Where a store keeps its contracts: the [`SchemaStore`] each store
//! implements ([`Transport::schemas`](crate::backend::transport::Transport::schemas)),
//! and [`MemorySchemas`], the in-process one (the memory store's).
//!
//! What a registration may do is [`contract::admit`](crate::contract::admit)'s;
//! a store runs it over all its subjects, read where its write happens
//! (one transaction, one lock, one log position), so two processes
//! registering versions of one subject at once end with a gap-free list
//! holding both, or one refused for what the other registered.

use parking_lot::Mutex;

use crate::model::contract::admit;
pub use crate::model::contract::{
    check_schema, Compatibility, Registration, SchemaVersion, Subject,
};
use crate::model::delivery::BoxFuture;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::topic::Pattern;

/// A store's schema registry.
pub trait SchemaStore: Send + Sync + 'static {
    /// Every subject, with its versions, in pattern order.
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>>;

    /// Register `registration` as [`admit`] decides, atomically against
    /// every other registration (of any process); the version stored (or
    /// the existing one, for the subject's latest schema again).
    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>>;

    /// Delete a subject and its versions; `NOT_FOUND` when there is none.
    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>>;
}

/// The `NOT_FOUND` of a subject that does not exist.
pub fn no_subject(pattern: &Pattern) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("no schema subject `{pattern}`"),
    )
}

/// Apply `registration` to `subjects` (all of a store's): the version to
/// answer with, `subjects` updated. For stores that hold them in memory
/// under a lock, or read them all in a transaction.
pub fn apply(subjects: &mut Vec<Subject>, registration: &Registration) -> Result<SchemaVersion> {
    apply_at(subjects, registration, chrono::Utc::now())
}

/// [`apply`] with the time a new version is registered at given: for a
/// store whose readers each add its log up and must agree (Kafka).
pub fn apply_at(
    subjects: &mut Vec<Subject>,
    registration: &Registration,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<SchemaVersion> {
    let (subject, n) = admit(subjects, registration, now)?.into_parts();
    let version = subject
        .version(n)
        .cloned()
        .ok_or_else(|| Error::validation(format!("version {n} was not admitted")))?;
    match subjects.iter_mut().find(|s| s.pattern == subject.pattern) {
        Some(slot) => *slot = subject,
        None => {
            subjects.push(subject);
            subjects.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
        }
    }
    Ok(version)
}

/// A subject as a SQL store keeps it: pattern, owner, description,
/// compatibility.
pub type StoredSubject = (String, Option<String>, Option<String>, String);

/// A version as a SQL store keeps it: pattern, version, schema (JSON
/// text), registered at (ms).
pub type StoredVersion = (String, i64, String, i64);

/// The subjects a SQL store's rows hold (each version under its subject's
/// pattern); a row that does not decode is `INTERNAL` (the store wrote it).
pub fn assemble(
    subjects: Vec<StoredSubject>,
    versions: Vec<StoredVersion>,
) -> Result<Vec<Subject>> {
    let broken = |what: String| Error::new(ErrorCode::Internal, format!("a stored schema {what}"));
    let mut out = subjects
        .into_iter()
        .map(|(pattern, owner, description, compatibility)| {
            Ok(Subject::stored(
                Pattern::new(&pattern).map_err(|e| broken(format!("subject: {e}")))?,
                owner,
                description,
                compatibility
                    .parse()
                    .map_err(|e| broken(format!("mode: {e}")))?,
            ))
        })
        .collect::<Result<Vec<Subject>>>()?;
    for (pattern, version, schema, registered_ms) in versions {
        let Some(subject) = out.iter_mut().find(|s| s.pattern.as_str() == pattern) else {
            continue;
        };
        let schema = serde_json::from_str(&schema).map_err(|e| broken(format!("version: {e}")))?;
        let at = chrono::DateTime::from_timestamp_millis(registered_ms).unwrap_or_default();
        subject
            .versions
            .push(SchemaVersion::new(version as u32, schema, at));
    }
    out.sort_by(|a, b| a.pattern.as_str().cmp(b.pattern.as_str()));
    Ok(out)
}

/// Subjects in this process, lost with it.
///
/// ```
/// use herald::backend::schemas::{MemorySchemas, SchemaStore};
/// use herald::contract::Registration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let store = MemorySchemas::default();
/// let schema = serde_json::json!({"type": "object"});
/// let v = store.register(Registration::new(herald::Pattern::new("orders.*")?, schema)).await?;
/// assert_eq!(v.version, 1);
/// assert_eq!(store.subjects().await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct MemorySchemas {
    subjects: Mutex<Vec<Subject>>,
}

impl SchemaStore for MemorySchemas {
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>> {
        let all = self.subjects.lock().clone();
        Box::pin(async move { Ok(all) })
    }

    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>> {
        let done = apply(&mut self.subjects.lock(), &registration);
        Box::pin(async move { done })
    }

    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>> {
        let mut subjects = self.subjects.lock();
        let before = subjects.len();
        subjects.retain(|s| &s.pattern != pattern);
        let done = if subjects.len() < before {
            Ok(())
        } else {
            Err(no_subject(pattern))
        };
        Box::pin(async move { done })
    }
}

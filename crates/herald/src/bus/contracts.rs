//! A bus's contracts: [`Schemas`], the handle that registers, reads, checks
//! and deletes its store's schema subjects, and the guard every publish
//! passes (`Guard`): each event on a topic with a subject is checked
//! against the version its `schema_version` names (default the latest),
//! as `HERALD_SCHEMAS` says (`enforce` refuses it with `VALIDATION`, `warn`
//! logs it, `off` checks nothing).
//!
//! The guard holds the store's subjects as last read: read at the first
//! publish, again in the background once they are [`REFRESH`] old, and at
//! once after this bus registers or deletes one. A schema another process
//! registers is enforced here within [`REFRESH`]. What may be registered is
//! [`contract`](crate::contract)'s; where it is stored, the store's.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::backend::schemas::{no_subject, SchemaStore};
use crate::bus::Bus;
use crate::model::contract::{
    breaking_changes, consumer_breaks, subject_of, BreakingChange, Compatibility, Registration,
    SchemaChecks, SchemaVersion, Subject, Validators,
};
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::event::EventSchema;
use crate::model::topic::{Pattern, Topic};

/// How old the guard lets its copy of the subjects get before it reads
/// them again (in the background; publishes go on with the copy).
pub const REFRESH: Duration = Duration::from_secs(1);

/// The subjects as last read, and when.
struct Copy {
    subjects: Arc<Vec<Subject>>,
    read_at: Instant,
}

/// What every publish of a bus passes; see the module docs.
pub(crate) struct Guard {
    checks: SchemaChecks,
    copy: RwLock<Option<Copy>>,
    validators: Validators,
    refreshing: std::sync::atomic::AtomicBool,
}

impl Guard {
    pub(crate) fn new(checks: SchemaChecks) -> Arc<Guard> {
        Arc::new(Guard {
            checks,
            copy: RwLock::new(None),
            validators: Validators::default(),
            refreshing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Take `subjects` as the store's now.
    fn set(&self, subjects: Vec<Subject>) {
        *self.copy.write() = Some(Copy {
            subjects: Arc::new(subjects),
            read_at: Instant::now(),
        });
    }

    /// The subjects to check against: the copy (read again in the
    /// background once it is [`REFRESH`] old), or read now the first time.
    /// A store that keeps no schemas has none.
    async fn subjects(
        self: &Arc<Self>,
        store: Option<Arc<dyn SchemaStore>>,
    ) -> Result<Arc<Vec<Subject>>> {
        let Some(store) = store else {
            return Ok(Arc::default());
        };
        let copy = self
            .copy
            .read()
            .as_ref()
            .map(|c| (c.subjects.clone(), c.read_at.elapsed() >= REFRESH));
        match copy {
            Some((subjects, stale)) => {
                if stale
                    && !self
                        .refreshing
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    let guard = self.clone();
                    tokio::spawn(async move {
                        if let Ok(fresh) = store.subjects().await {
                            guard.set(fresh);
                        }
                        guard
                            .refreshing
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                Ok(subjects)
            }
            None => {
                let fresh = store.subjects().await?;
                self.set(fresh);
                Ok(self
                    .copy
                    .read()
                    .as_ref()
                    .map(|c| c.subjects.clone())
                    .unwrap_or_default())
            }
        }
    }

    /// Check `batch` as `HERALD_SCHEMAS` says.
    pub(crate) async fn check(self: &Arc<Self>, bus: &Bus, batch: &[Envelope]) -> Result<()> {
        if self.checks == SchemaChecks::Off || batch.is_empty() {
            return Ok(());
        }
        let subjects = self.subjects(bus.schema_store()).await?;
        if subjects.is_empty() {
            return Ok(());
        }
        for env in batch {
            let Some(subject) = subject_of(&subjects, env.topic()) else {
                continue;
            };
            let checked = self.validators.check(
                subject,
                env.schema_version(),
                env.payload(),
                env.content_type(),
            );
            match (checked, self.checks) {
                (Ok(()), _) => {}
                (Err(e), SchemaChecks::Warn) => tracing::warn!(
                    topic = %env.topic(),
                    correlation_id = %env.correlation_id(),
                    "published against its schema (HERALD_SCHEMAS=warn): {e}"
                ),
                (Err(e), _) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Bus {
    /// This bus's store's schema registry: register, read, check and delete
    /// its subjects (DESIGN.md §11).
    ///
    /// ```
    /// use herald::{Bus, ErrorCode, Message};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// let schema = serde_json::json!({
    ///     "type": "object",
    ///     "required": ["id"],
    ///     "properties": {"id": {"type": "string"}}
    /// });
    /// let v1 = bus.schemas().register("orders.placed", schema).owner("billing").await?;
    /// assert_eq!(v1.version, 1);
    /// bus.publish(Message::json("orders.placed", &serde_json::json!({"id": "o-1"}))?).await?;
    /// let refused = bus.publish(Message::json("orders.placed", &serde_json::json!({"id": 7}))?).await;
    /// assert_eq!(refused.unwrap_err().code(), ErrorCode::Validation);
    /// # Ok(()) }
    /// ```
    pub fn schemas(&self) -> Schemas {
        Schemas { bus: self.clone() }
    }

    /// The store's schema registry; `None` for a store that keeps none.
    fn schema_store(&self) -> Option<Arc<dyn SchemaStore>> {
        self.inner.transport.schemas().ok()
    }

    /// Check `batch` against its topics' schemas (see the module docs).
    pub(crate) async fn check_contracts(&self, batch: &[Envelope]) -> Result<()> {
        self.inner.contracts.clone().check(self, batch).await
    }
}

/// A bus's schema registry; see [`Bus::schemas`].
#[derive(Clone)]
pub struct Schemas {
    bus: Bus,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").finish_non_exhaustive()
    }
}

impl Schemas {
    fn store(&self) -> Result<Arc<dyn SchemaStore>> {
        self.bus.inner.transport.schemas()
    }

    /// Register `schema` under the subject `pattern`: its next version, or
    /// the latest again when it is that schema. Refused with `VALIDATION`
    /// (naming each breaking change) when the subject's mode calls it
    /// breaking; see [`contract::admit`](crate::contract::admit).
    pub fn register(&self, pattern: &str, schema: serde_json::Value) -> Register {
        Register {
            schemas: self.clone(),
            pattern: Pattern::new(pattern),
            schema,
            owner: None,
            description: None,
            compatibility: None,
        }
    }

    /// Every subject, with its versions.
    pub async fn list(&self) -> Result<Vec<Subject>> {
        let subjects = self.store()?.subjects().await?;
        self.bus.inner.contracts.set(subjects.clone());
        Ok(subjects)
    }

    /// The subject `pattern`; `NOT_FOUND` when there is none.
    pub async fn get(&self, pattern: &str) -> Result<Subject> {
        let pattern = Pattern::new(pattern)?;
        self.list()
            .await?
            .into_iter()
            .find(|s| s.pattern == pattern)
            .ok_or_else(|| no_subject(&pattern))
    }

    /// Version `n` of subject `pattern`; `NOT_FOUND` when either is not
    /// there.
    pub async fn version(&self, pattern: &str, n: u32) -> Result<SchemaVersion> {
        let subject = self.get(pattern).await?;
        subject.version(n).cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!(
                    "subject `{}` has no version {n} (it has 1–{})",
                    subject.pattern,
                    subject.versions.len()
                ),
            )
        })
    }

    /// What registering `schema` under `pattern` would break, by the
    /// subject's mode or `mode` (a dry run: nothing is stored). Empty for
    /// a compatible schema or a subject that does not exist yet.
    pub async fn check(
        &self,
        pattern: &str,
        schema: &serde_json::Value,
        mode: Option<Compatibility>,
    ) -> Result<Vec<BreakingChange>> {
        let pattern = Pattern::new(pattern)?;
        let subjects = self.list().await?;
        let Some(mut subject) = subjects.into_iter().find(|s| s.pattern == pattern) else {
            crate::model::contract::check_schema(schema)?;
            return Ok(Vec::new());
        };
        if let Some(mode) = mode {
            subject.compatibility = mode;
        }
        breaking_changes(&subject, schema)
    }

    /// Register each topic of `E` with its payload's schema
    /// ([`EventSchema`], `#[derive(EventSchema)]`), one subject per topic:
    /// every topic is dry-run first, so a type one of whose topics breaks
    /// its subject registers none (`VALIDATION` naming each change); each
    /// topic then gets its next version, or its latest again.
    ///
    /// ```
    /// use herald::{Bus, Event, EventSchema};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// #[derive(Event, EventSchema)]
    /// enum OrderEvent {
    ///     Placed { id: String, total: u64 },
    /// }
    ///
    /// let bus = Bus::memory();
    /// let versions = bus.schemas().register_event::<OrderEvent>().owner("billing").await?;
    /// assert_eq!(versions[0].version, 1);
    /// bus.schemas().check_event::<OrderEvent>().await?;
    /// # Ok(()) }
    /// ```
    pub fn register_event<E: EventSchema>(&self) -> RegisterEvent {
        RegisterEvent {
            topics: E::schemas()
                .into_iter()
                .map(|(topic, schema)| self.register(topic, schema))
                .collect(),
        }
    }

    /// Whether a consumer decoding into `E` reads every event its topics'
    /// subjects allow, under each of their versions
    /// ([`contract::consumer_breaks`](crate::contract::consumer_breaks)):
    /// `VALIDATION` naming each change it may fail on, for a consumer to
    /// fail fast at start. A topic without a subject passes.
    pub async fn check_event<E: EventSchema>(&self) -> Result<()> {
        self.check_reader(&E::schemas()).await
    }

    /// [`check_event`](Self::check_event) for `readers` (topic, schema).
    pub(crate) async fn check_reader(
        &self,
        readers: &[(&'static str, serde_json::Value)],
    ) -> Result<()> {
        let subjects = self.list().await?;
        for (topic, reader) in readers {
            let Some(subject) = subject_of(&subjects, &Topic::new(topic)?) else {
                continue;
            };
            let breaks = consumer_breaks(subject, reader)?;
            if !breaks.is_empty() {
                let reasons: Vec<String> = breaks.iter().map(ToString::to_string).collect();
                return Err(Error::validation(format!(
                    "this consumer cannot read every event of `{topic}` (subject `{}`): {}",
                    subject.pattern,
                    reasons.join("; ")
                )));
            }
        }
        Ok(())
    }

    /// Delete subject `pattern` and its versions; `NOT_FOUND` when there
    /// is none.
    pub async fn delete(&self, pattern: &str) -> Result<()> {
        let pattern = Pattern::new(pattern)?;
        self.store()?.delete(&pattern).await?;
        self.bus.inner.contracts.validators.forget(&pattern);
        self.list().await.map(drop)
    }
}

/// Registering a Rust type's schemas; `.await` it. See
/// [`Schemas::register_event`].
#[must_use = "a registration happens when awaited"]
pub struct RegisterEvent {
    /// One registration per topic, with the settings asked for.
    topics: Vec<Register>,
}

impl RegisterEvent {
    /// See [`Register::owner`].
    pub fn owner(self, owner: impl Into<String>) -> Self {
        let owner = owner.into();
        self.each(|r| r.owner(owner.clone()))
    }

    /// See [`Register::description`].
    pub fn description(self, description: impl Into<String>) -> Self {
        let description = description.into();
        self.each(|r| r.description(description.clone()))
    }

    /// See [`Register::compatibility`].
    pub fn compatibility(self, mode: Compatibility) -> Self {
        self.each(|r| r.compatibility(mode))
    }

    fn each(self, f: impl Fn(Register) -> Register) -> Self {
        RegisterEvent {
            topics: self.topics.into_iter().map(f).collect(),
        }
    }
}

impl IntoFuture for RegisterEvent {
    type Output = Result<Vec<SchemaVersion>>;
    type IntoFuture = BoxFuture<'static, Result<Vec<SchemaVersion>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            for r in &self.topics {
                // A bad pattern is refused by its registration below.
                let Ok(pattern) = &r.pattern else { continue };
                let breaks = r
                    .schemas
                    .check(pattern.as_str(), &r.schema, r.compatibility)
                    .await?;
                if !breaks.is_empty() {
                    return Err(refused(pattern.as_str(), &breaks));
                }
            }
            let mut versions = Vec::with_capacity(self.topics.len());
            for register in self.topics {
                versions.push(register.await?);
            }
            Ok(versions)
        })
    }
}

/// `VALIDATION` naming each of `breaks` on `topic`.
fn refused(topic: &str, breaks: &[BreakingChange]) -> Error {
    let reasons: Vec<String> = breaks.iter().map(ToString::to_string).collect();
    Error::validation(format!(
        "the schema of `{topic}` breaks its subject: {}",
        reasons.join("; ")
    ))
}

/// A registration; `.await` it. See [`Schemas::register`].
#[must_use = "a registration happens when awaited"]
pub struct Register {
    schemas: Schemas,
    pattern: Result<Pattern>,
    schema: serde_json::Value,
    owner: Option<String>,
    description: Option<String>,
    compatibility: Option<Compatibility>,
}

impl Register {
    /// The owning team or service (kept until another registration names
    /// another).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// What travels on the subject's topics.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The subject's mode from now on (this registration is checked by it).
    pub fn compatibility(mut self, mode: Compatibility) -> Self {
        self.compatibility = Some(mode);
        self
    }
}

impl IntoFuture for Register {
    type Output = Result<SchemaVersion>;
    type IntoFuture = BoxFuture<'static, Result<SchemaVersion>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut registration = Registration::new(self.pattern?, self.schema);
            registration.owner = self.owner;
            registration.description = self.description;
            registration.compatibility = self.compatibility;
            let version = self.schemas.store()?.register(registration).await?;
            self.schemas.list().await?;
            Ok(version)
        })
    }
}

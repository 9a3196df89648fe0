//! Contracts (DESIGN.md §11): what travels on a topic, as versioned JSON
//! Schemas.
//!
//! Owns the registry's model — a [`Subject`] (a topic pattern with its
//! owner, description, [`Compatibility`] and ordered [`SchemaVersion`]s), a
//! [`Registration`] — and its rules: what registering a schema does
//! ([`admit`]: a bounded, valid JSON Schema; no overlap with another
//! subject of other schemas; the same schema again is its version back; a
//! version the subject's mode calls breaking is refused with each
//! [`BreakingChange`] named), and checking a payload against a version with
//! validators compiled once per version ([`Validators`]). Where subjects
//! are stored, and how a registration is made atomic against other
//! processes, is each store's
//! ([`SchemaStore`](crate::backend::schemas::SchemaStore)); when a publish
//! is checked is the bus's.
//!
//! **What the modes protect.** herald names a mode for the consumers it
//! keeps working: under `backward` (the default) every event valid under
//! the new version is valid under the version before it, so consumers
//! written against earlier versions keep decoding what producers of the new
//! one publish — adding an optional field passes, removing a required one
//! is refused. `forward` asks the reverse (the new version accepts every
//! event of the one before: consumers move first), `full` both, and each
//! `*_transitive` form checks against every earlier version, not only the
//! latest. Confluent's registry names its modes for the reader's schema
//! instead, so its `FORWARD` is herald's `backward`. The changes themselves
//! come from `json-schema-diff` (Sentry's, made for this check on its Kafka
//! schemas): what it does not model (`patternProperties`, `allOf` and
//! friends, `$ref` targets) it does not report.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::model::error::{Error, Result};
use crate::model::payload::Payload;
use crate::model::topic::{Pattern, Topic};

/// The largest schema accepted, serialized (1 MiB).
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// The longest owner or description.
pub const MAX_TEXT: usize = 1024;

/// Which versions a new one must not break, and for whom (see the module
/// docs): `backward` is the default.
///
/// ```
/// use herald::contract::Compatibility;
/// assert_eq!("full_transitive".parse::<Compatibility>().unwrap(), Compatibility::FullTransitive);
/// assert_eq!(Compatibility::default().as_str(), "backward");
/// assert!("sideways".parse::<Compatibility>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compatibility {
    /// Events of the new version are valid under the latest before it.
    #[default]
    Backward,
    /// … under every version before it.
    BackwardTransitive,
    /// The new version accepts every event of the latest before it.
    Forward,
    /// … of every version before it.
    ForwardTransitive,
    /// Both `backward` and `forward`, against the latest.
    Full,
    /// Both, against every version before it.
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    /// Every mode, in the order the docs list them.
    pub const ALL: [Compatibility; 7] = [
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
        Compatibility::None,
    ];

    /// How it is spelled: `backward`, `forward_transitive`, `none`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::BackwardTransitive => "backward_transitive",
            Compatibility::Forward => "forward",
            Compatibility::ForwardTransitive => "forward_transitive",
            Compatibility::Full => "full",
            Compatibility::FullTransitive => "full_transitive",
            Compatibility::None => "none",
        }
    }

    /// Whether new events must stay valid under earlier versions.
    fn keeps_consumers(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Whether earlier events must stay valid under the new version.
    fn keeps_events(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Whether every earlier version is checked, not only the latest.
    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }
}

impl std::str::FromStr for Compatibility {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Compatibility::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| {
                let all: Vec<&str> = Compatibility::ALL.iter().map(|c| c.as_str()).collect();
                Error::validation(format!(
                    "unknown compatibility {s:?}: expected one of {}",
                    all.join(", ")
                ))
            })
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Compatibility {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Compatibility {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a publish does with an event its topic's schema refuses
/// (`HERALD_SCHEMAS`; without a subject for the topic there is nothing to
/// check).
///
/// ```
/// use herald::contract::SchemaChecks;
/// assert_eq!("warn".parse::<SchemaChecks>().unwrap(), SchemaChecks::Warn);
/// assert_eq!(SchemaChecks::default(), SchemaChecks::Enforce);
/// assert!("strict".parse::<SchemaChecks>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchemaChecks {
    /// Check nothing.
    Off,
    /// Publish it and log a warning.
    Warn,
    /// Refuse the publish with `VALIDATION` (the default).
    #[default]
    Enforce,
}

impl std::str::FromStr for SchemaChecks {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "off" => Ok(SchemaChecks::Off),
            "warn" => Ok(SchemaChecks::Warn),
            "enforce" => Ok(SchemaChecks::Enforce),
            other => Err(Error::validation(format!(
                "HERALD_SCHEMAS={other:?} is not allowed: expected off, warn or enforce"
            ))),
        }
    }
}

/// One registered version of a subject's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SchemaVersion {
    /// Its number: 1, 2, … without gaps.
    pub version: u32,
    /// The JSON Schema (draft 2020-12 unless it says otherwise).
    pub schema: serde_json::Value,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
}

impl SchemaVersion {
    /// Version `version` of `schema`, registered at `registered_at`.
    pub fn new(version: u32, schema: serde_json::Value, registered_at: DateTime<Utc>) -> Self {
        SchemaVersion {
            version,
            schema,
            registered_at,
        }
    }
}

/// A topic pattern's contract: who owns it, what it is, how it may evolve,
/// and its schema versions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Subject {
    /// The topics it covers.
    pub pattern: Pattern,
    /// The owning team or service.
    pub owner: Option<String>,
    /// What travels on it.
    pub description: Option<String>,
    /// How a new version may differ.
    pub compatibility: Compatibility,
    /// Its versions, `1..=n` in order.
    pub versions: Vec<SchemaVersion>,
}

impl Subject {
    /// A subject as a store read it back, before its versions are added.
    pub fn stored(
        pattern: Pattern,
        owner: Option<String>,
        description: Option<String>,
        compatibility: Compatibility,
    ) -> Self {
        Subject {
            pattern,
            owner,
            description,
            compatibility,
            versions: Vec::new(),
        }
    }

    /// The latest version.
    pub fn latest(&self) -> Option<&SchemaVersion> {
        self.versions.last()
    }

    /// Version `n`, if registered.
    pub fn version(&self, n: u32) -> Option<&SchemaVersion> {
        self.versions
            .get((n as usize).checked_sub(1)?)
            .filter(|v| v.version == n)
    }
}

/// A schema to register under a subject, with the subject's settings: an
/// owner, description or mode left `None` keeps the subject's (a new
/// subject: none, none, `backward`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Registration {
    /// The subject.
    pub pattern: Pattern,
    /// The schema.
    pub schema: serde_json::Value,
    /// A new owner.
    pub owner: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new mode (it applies to this registration already).
    pub compatibility: Option<Compatibility>,
}

impl Registration {
    /// `schema` for `pattern`, keeping the subject's settings.
    pub fn new(pattern: Pattern, schema: serde_json::Value) -> Self {
        Registration {
            pattern,
            schema,
            owner: None,
            description: None,
            compatibility: None,
        }
    }
}

/// A change a mode refuses: which earlier version it breaks, where in the
/// schema, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakingChange {
    /// The earlier version it breaks.
    pub version: u32,
    /// Where: `""` for the root, `.field` for a property.
    pub path: String,
    /// What.
    pub change: String,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(
            f,
            "against version {} at {at}: {}",
            self.version, self.change
        )
    }
}

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// The schema is the subject's latest version already: that version
    /// back, the subject's settings updated as asked.
    Existing(Subject, u32),
    /// A new version: the subject as it is to be stored.
    New(Subject, u32),
}

impl Admitted {
    /// The subject to store and the version to answer with.
    pub fn into_parts(self) -> (Subject, u32) {
        match self {
            Admitted::Existing(s, v) | Admitted::New(s, v) => (s, v),
        }
    }
}

/// Decide a registration against the stored `subjects` (every subject of
/// the store, read in the same transaction or under the same lock as the
/// write): the schema's bounds and validity, the text fields', an overlap
/// with another subject whose latest schema differs, the breaking changes
/// the subject's mode refuses (each named, in one `VALIDATION` error), and
/// idempotence (the subject's latest schema again is that version).
///
/// ```
/// use herald::contract::{admit, Admitted, Registration};
/// use herald::Pattern;
/// let v1 = serde_json::json!({"type": "object", "properties": {"id": {"type": "string"}}});
/// let first = admit(&[], &Registration::new(Pattern::new("orders.placed")?, v1.clone()), chrono::Utc::now())?;
/// let (subject, version) = first.into_parts();
/// assert_eq!(version, 1);
/// let again = admit(&[subject], &Registration::new(Pattern::new("orders.placed")?, v1), chrono::Utc::now())?;
/// assert!(matches!(again, Admitted::Existing(_, 1)));
/// # Ok::<(), herald::Error>(())
/// ```
pub fn admit(subjects: &[Subject], reg: &Registration, now: DateTime<Utc>) -> Result<Admitted> {
    check_schema(&reg.schema)?;
    for (field, text) in [("owner", &reg.owner), ("description", &reg.description)] {
        if let Some(t) = text {
            if t.len() > MAX_TEXT || t.chars().any(|c| c.is_control() && c != '\n') {
                return Err(Error::validation(format!(
                    "a subject's {field} is at most {MAX_TEXT} bytes without control characters"
                )));
            }
        }
    }
    let current = subjects.iter().find(|s| s.pattern == reg.pattern);
    for other in subjects.iter().filter(|s| s.pattern != reg.pattern) {
        let same = other.latest().map(|v| &v.schema) == Some(&reg.schema);
        if !same && overlap(&other.pattern, &reg.pattern) {
            return Err(Error::validation(format!(
                "subject `{}` overlaps subject `{}`, which has another schema: a topic would have two contracts",
                reg.pattern, other.pattern
            )));
        }
    }
    let mut subject = current.cloned().unwrap_or_else(|| Subject {
        pattern: reg.pattern.clone(),
        owner: None,
        description: None,
        compatibility: Compatibility::default(),
        versions: Vec::new(),
    });
    if let Some(o) = &reg.owner {
        subject.owner = Some(o.clone());
    }
    if let Some(d) = &reg.description {
        subject.description = Some(d.clone());
    }
    if let Some(c) = reg.compatibility {
        subject.compatibility = c;
    }
    if let Some(latest) = subject.latest().filter(|v| v.schema == reg.schema) {
        let n = latest.version;
        return Ok(Admitted::Existing(subject, n));
    }
    let breaking = breaking_changes(&subject, &reg.schema)?;
    if !breaking.is_empty() {
        let list: Vec<String> = breaking.iter().map(|b| b.to_string()).collect();
        return Err(Error::validation(format!(
            "the schema breaks subject `{}` ({}): {}",
            subject.pattern,
            subject.compatibility,
            list.join("; ")
        )));
    }
    let n = subject.versions.len() as u32 + 1;
    subject
        .versions
        .push(SchemaVersion::new(n, reg.schema.clone(), now));
    Ok(Admitted::New(subject, n))
}

/// The changes from `subject`'s versions to `schema` its mode refuses
/// (nothing under `none`, or for a subject without versions).
pub fn breaking_changes(
    subject: &Subject,
    schema: &serde_json::Value,
) -> Result<Vec<BreakingChange>> {
    check_schema(schema)?;
    let mode = subject.compatibility;
    let against: Vec<&SchemaVersion> = if mode.transitive() {
        subject.versions.iter().collect()
    } else {
        subject.latest().into_iter().collect()
    };
    let mut out = Vec::new();
    for earlier in against {
        if mode.keeps_consumers() {
            // Every new event must be valid under the earlier version.
            for c in diff(schema, &earlier.schema)? {
                out.push(described(earlier.version, c, "events of the new version"));
            }
        }
        if mode.keeps_events() {
            // Every earlier event must be valid under the new version.
            for c in diff(&earlier.schema, schema)? {
                out.push(described(earlier.version, c, "its events"));
            }
        }
    }
    Ok(out)
}

/// What a consumer decoding into `reader` (the JSON Schema of the type it
/// decodes into) may fail to read: for each of `subject`'s versions, where
/// an event valid under it may be invalid under `reader`. Every version
/// counts, not only the latest: events published under an earlier one stay
/// in the log. Empty when the reader reads them all.
///
/// A property the reader declares and a version leaves undeclared (an
/// optional field the consumer added) is taken as absent from that
/// version's events, though an open version would allow it with any type:
/// counting it would fail every consumer that added an optional field,
/// the evolution `backward` exists to allow. A field the reader requires
/// and a version does not is counted.
///
/// ```
/// use herald::contract::{consumer_breaks, Subject};
/// use herald::Pattern;
/// # let now = chrono::Utc::now();
/// let v1 = serde_json::json!({"type": "object", "properties": {"id": {"type": "string"}}});
/// let mut subject =
///     Subject::stored(Pattern::new("orders.placed").unwrap(), None, None, Default::default());
/// subject.versions.push(herald::contract::SchemaVersion::new(1, v1, now));
/// let needs_total = serde_json::json!({"type": "object", "required": ["total"]});
/// let breaks = consumer_breaks(&subject, &needs_total).unwrap();
/// assert_eq!(breaks[0].version, 1);
/// assert!(breaks[0].change.contains("`total`"));
/// ```
pub fn consumer_breaks(
    subject: &Subject,
    reader: &serde_json::Value,
) -> Result<Vec<BreakingChange>> {
    check_schema(reader)?;
    let mut out = Vec::new();
    for version in &subject.versions {
        for c in diff(&version.schema, reader)? {
            if matches!(c.change, json_schema_diff::ChangeKind::PropertyAdd { .. }) {
                continue;
            }
            out.push(described(version.version, c, "its events"));
        }
    }
    Ok(out)
}

/// The breaking changes from `lhs` to `rhs`: where events valid under
/// `lhs` may fail `rhs`.
fn diff(lhs: &serde_json::Value, rhs: &serde_json::Value) -> Result<Vec<json_schema_diff::Change>> {
    let changes = json_schema_diff::diff(lhs.clone(), rhs.clone())
        .map_err(|e| Error::validation(format!("the schemas cannot be compared: {e}")))?;
    Ok(changes
        .into_iter()
        .filter(|c| c.change.is_breaking())
        .collect())
}

/// A breaking change in words: `whose` events (valid under the diff's left
/// side) may fail version `version`'s check because of `c`.
fn described(version: u32, c: json_schema_diff::Change, whose: &str) -> BreakingChange {
    use json_schema_diff::ChangeKind as K;
    let change = match &c.change {
        K::RequiredAdd { property } => {
            format!("`{property}` is required by one side only: {whose} may lack it")
        }
        K::PropertyAdd { added, .. } => {
            format!("property `{added}` is declared by one side only: {whose} may carry it with another type")
        }
        K::PropertyRemove { removed, .. } => {
            format!("property `{removed}` is not allowed by one side: {whose} may carry it")
        }
        K::TypeRemove { removed } => {
            format!(
                "type {} is allowed by one side only: {whose} may be one",
                json(removed)
            )
        }
        other => format!("{}: {whose} may fail it", json(other)),
    };
    BreakingChange {
        version,
        path: c.path,
        change,
    }
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Refuse a schema over [`MAX_SCHEMA_BYTES`] or that is not a valid JSON
/// Schema.
pub fn check_schema(schema: &serde_json::Value) -> Result<()> {
    let size = serde_json::to_vec(schema)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_SCHEMA_BYTES {
        return Err(Error::validation(format!(
            "a schema is at most {MAX_SCHEMA_BYTES} bytes; this one is {size}"
        )));
    }
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(Error::validation(
            "a schema is a JSON object (or true/false)",
        ));
    }
    jsonschema::meta::validate(schema).map_err(|e| {
        Error::validation(format!(
            "not a valid JSON Schema at {}: {e}",
            pointer(e.instance_path().as_str())
        ))
    })?;
    jsonschema::validator_for(schema)
        .map(drop)
        .map_err(|e| Error::validation(format!("the schema does not compile: {e}")))
}

fn pointer(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// Whether some topic matches both patterns.
///
/// ```
/// use herald::{contract::overlap, Pattern};
/// let p = |s| Pattern::new(s).unwrap();
/// assert!(overlap(&p("orders.*"), &p("orders.placed")));
/// assert!(overlap(&p("orders.>"), &p("*.placed.eu")));
/// assert!(!overlap(&p("orders.*"), &p("orders.placed.eu")));
/// assert!(!overlap(&p("orders.placed"), &p("orders.placed.>")));
/// ```
pub fn overlap(a: &Pattern, b: &Pattern) -> bool {
    let (mut a, mut b) = (a.as_str().split('.'), b.as_str().split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The subject whose pattern matches `topic`, among `subjects`.
pub fn subject_of<'a>(subjects: &'a [Subject], topic: &Topic) -> Option<&'a Subject> {
    subjects.iter().find(|s| s.pattern.matches(topic))
}

/// Validators compiled once per subject and version, shared by every check
/// of a bus.
#[derive(Default)]
pub struct Validators {
    compiled: RwLock<HashMap<(Pattern, u32), Arc<jsonschema::Validator>>>,
}

impl fmt::Debug for Validators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validators")
            .field("compiled", &self.compiled.read().len())
            .finish()
    }
}

impl Validators {
    /// Check `payload` (of `content_type`) on `topic` against version
    /// `version` of `subject` (default its latest): `VALIDATION` with the
    /// JSON pointer of the first error, for a version the subject does not
    /// have, or for a payload that is not JSON.
    ///
    /// ```
    /// use herald::contract::{admit, Registration, Validators};
    /// use herald::{Pattern, Payload, Topic};
    /// let schema = serde_json::json!({"type": "object", "required": ["id"]});
    /// let reg = Registration::new(Pattern::new("orders.*")?, schema);
    /// let (subject, _) = admit(&[], &reg, chrono::Utc::now())?.into_parts();
    /// let checks = Validators::default();
    /// let ok = Payload::json(&serde_json::json!({"id": 1}))?;
    /// checks.check(&subject, None, &ok, "application/json")?;
    /// let bad = Payload::json(&serde_json::json!({"name": 1}))?;
    /// let e = checks.check(&subject, None, &bad, "application/json").unwrap_err();
    /// assert!(e.to_string().contains("id"), "{e}");
    /// # Ok::<(), herald::Error>(())
    /// ```
    pub fn check(
        &self,
        subject: &Subject,
        version: Option<&str>,
        payload: &Payload,
        content_type: &str,
    ) -> Result<()> {
        let n = match version {
            None => subject.latest().map(|v| v.version).unwrap_or(0),
            Some(text) => text.trim_start_matches('v').parse().map_err(|_| {
                Error::validation(format!(
                    "schema_version {text:?} is not a version of subject `{}` (1, 2, …)",
                    subject.pattern
                ))
            })?,
        };
        let Some(v) = subject.version(n) else {
            return Err(Error::validation(format!(
                "subject `{}` has no schema version {n} (it has 1–{})",
                subject.pattern,
                subject.versions.len()
            )));
        };
        let validator = self.validator(subject, v)?;
        let value: serde_json::Value = match payload {
            Payload::Json(raw) => serde_json::from_str(raw.get())
                .map_err(|e| Error::validation(format!("payload is not JSON: {e}")))?,
            Payload::Bytes(_) => {
                return Err(Error::validation(format!(
                    "subject `{}` has a JSON Schema; a {content_type} payload cannot match it",
                    subject.pattern
                )))
            }
        };
        let failed = validator.validate(&value).err().map(|e| {
            format!(
                "payload fails subject `{}` version {n} at {}: {e}",
                subject.pattern,
                pointer(e.instance_path().as_str())
            )
        });
        failed.map_or(Ok(()), |why| Err(Error::validation(why)))
    }

    fn validator(
        &self,
        subject: &Subject,
        v: &SchemaVersion,
    ) -> Result<Arc<jsonschema::Validator>> {
        let key = (subject.pattern.clone(), v.version);
        if let Some(found) = self.compiled.read().get(&key) {
            return Ok(found.clone());
        }
        let compiled = Arc::new(
            jsonschema::validator_for(&v.schema)
                .map_err(|e| Error::validation(format!("the schema does not compile: {e}")))?,
        );
        self.compiled.write().insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Forget the validators of `pattern` (its subject was deleted: a new
    /// one's version 1 is another schema).
    pub fn forget(&self, pattern: &Pattern) {
        self.compiled.write().retain(|(p, _), _| p != pattern);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(schema: serde_json::Value) -> Registration {
        Registration::new(Pattern::new("orders.placed").unwrap(), schema)
    }

    fn object(required: &[&str], props: &[&str]) -> serde_json::Value {
        let properties: serde_json::Map<String, serde_json::Value> = props
            .iter()
            .map(|p| (p.to_string(), json!({"type": "string"})))
            .collect();
        json!({"type": "object", "required": required, "properties": properties})
    }

    fn register(subjects: &mut Vec<Subject>, r: &Registration) -> Result<u32> {
        let (subject, n) = admit(subjects, r, Utc::now())?.into_parts();
        subjects.retain(|s| s.pattern != subject.pattern);
        subjects.push(subject);
        Ok(n)
    }

    #[test]
    fn backward_passes_an_optional_field_and_refuses_a_removed_required_one() {
        let mut subjects = Vec::new();
        let v1 = object(&["id", "total"], &["id", "total"]);
        assert_eq!(register(&mut subjects, &reg(v1.clone())).unwrap(), 1);
        let v2 = object(&["id", "total"], &["id", "total", "note"]);
        assert_eq!(register(&mut subjects, &reg(v2)).unwrap(), 2);
        let v3 = object(&["id"], &["id", "note"]);
        let e = register(&mut subjects, &reg(v3.clone())).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Validation);
        assert!(e.to_string().contains("`total`"), "{e}");
        assert_eq!(subjects[0].versions.len(), 2, "nothing registered");
        // The same change passes once the mode allows it.
        let mut none = reg(v3);
        none.compatibility = Some(Compatibility::None);
        assert_eq!(register(&mut subjects, &none).unwrap(), 3);
        assert_eq!(subjects[0].compatibility, Compatibility::None);
        assert_eq!(register(&mut subjects, &reg(v1)).unwrap(), 4);
    }

    #[test]
    fn forward_and_transitive_modes_check_what_they_say() {
        let mut subjects = Vec::new();
        let mut first = reg(object(&["id"], &["id"]));
        first.compatibility = Some(Compatibility::Forward);
        register(&mut subjects, &first).unwrap();
        // Forward: the new version must accept the old events; requiring a
        // new field does not.
        let e = register(
            &mut subjects,
            &reg(object(&["id", "total"], &["id", "total"])),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`total`"), "{e}");
        // Dropping a required field passes forward (old events still fit).
        register(&mut subjects, &reg(object(&[], &["id"]))).unwrap();
        // Backward transitive checks version 1 too, not only version 2.
        let mut transitive = reg(object(&[], &["id", "total"]));
        transitive.compatibility = Some(Compatibility::BackwardTransitive);
        let e = register(&mut subjects, &transitive).unwrap_err();
        assert!(e.to_string().contains("against version 1"), "{e}");
    }

    #[test]
    fn bad_registrations_change_nothing() {
        let mut subjects = Vec::new();
        register(&mut subjects, &reg(object(&["id"], &["id"]))).unwrap();
        let before = subjects.clone();
        let huge = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)});
        for (schema, why) in [
            (json!({"type": 12}), "not valid JSON Schema"),
            (json!("a string"), "not a schema"),
            (huge, "oversize"),
        ] {
            let e = admit(&subjects, &reg(schema), Utc::now()).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::Validation, "{why}: {e}");
        }
        let overlapping =
            Registration::new(Pattern::new("orders.*").unwrap(), json!({"type": "string"}));
        let e = admit(&subjects, &overlapping, Utc::now()).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        assert_eq!(subjects, before);
    }

    #[test]
    fn a_payload_is_checked_against_the_version_it_names() {
        let mut subjects = Vec::new();
        register(
            &mut subjects,
            &reg(json!({"type": "object", "properties": {"n": {"type": "integer"}}})),
        )
        .unwrap();
        let mut relaxed =
            reg(json!({"type": "object", "properties": {"n": {"type": ["integer", "string"]}}}));
        relaxed.compatibility = Some(Compatibility::Forward);
        register(&mut subjects, &relaxed).unwrap();
        let checks = Validators::default();
        let text = Payload::json(&json!({"n": "seven"})).unwrap();
        let s = &subjects[0];
        checks.check(s, None, &text, "application/json").unwrap();
        checks
            .check(s, Some("2"), &text, "application/json")
            .unwrap();
        let e = checks
            .check(s, Some("1"), &text, "application/json")
            .unwrap_err();
        assert!(
            e.to_string().contains("/n"),
            "the pointer of the first error: {e}"
        );
        let e = checks
            .check(s, Some("9"), &text, "application/json")
            .unwrap_err();
        assert!(e.to_string().contains("no schema version 9"), "{e}");
        let bytes = Payload::bytes(vec![1u8, 2]);
        assert!(checks
            .check(s, None, &bytes, "application/octet-stream")
            .is_err());
    }
}

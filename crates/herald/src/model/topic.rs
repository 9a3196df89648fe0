//! Topic names and subscription patterns.
//!
//! Owns the naming rule (DESIGN.md §3): a topic is 1–255 characters of
//! lowercase dot-separated segments, each segment non-empty and made of
//! `[a-z0-9_-]`. A [`Pattern`] follows NATS: `*` matches exactly one segment,
//! `>` (last segment only) matches one or more remaining segments.
//!
//! This module does not know about sequences or subscribers; the transports use
//! [`Pattern::matches`] to route.

use std::fmt;
use std::sync::Arc;

use crate::model::error::{Error, Result};

/// Longest topic or pattern, in bytes (all allowed characters are ASCII).
pub const MAX_TOPIC_LEN: usize = 255;

/// A validated topic name, cheap to clone.
///
/// ```
/// use herald::Topic;
/// let t = Topic::new("user.created").unwrap();
/// assert_eq!(t.as_str(), "user.created");
/// assert!(Topic::new("User.Created").is_err());
/// assert!(Topic::new("user..created").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validate `name` and make a topic of it; a `VALIDATION` error says why not.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        check(name, "topic", false)?;
        Ok(Topic(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Topic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Topic::new(s)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// A subscription pattern: a topic name whose segments may be `*` (one segment)
/// or, as the last segment, `>` (one or more segments).
///
/// ```
/// use herald::{Pattern, Topic};
/// let p = Pattern::new("chat.session.*").unwrap();
/// assert!(p.matches(&Topic::new("chat.session.42").unwrap()));
/// assert!(!p.matches(&Topic::new("chat.session.42.typing").unwrap()));
/// assert!(Pattern::new("chat.>").unwrap().matches(&Topic::new("chat.session.42.typing").unwrap()));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    literal: bool,
}

impl Pattern {
    /// Validate `pattern`; a `VALIDATION` error says why it is not one.
    pub fn new(pattern: impl AsRef<str>) -> Result<Self> {
        let text = pattern.as_ref();
        check(text, "pattern", true)?;
        let literal = !text.split('.').any(|s| s == "*" || s == ">");
        Ok(Pattern {
            text: Arc::from(text),
            literal,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard (it names exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Whether the topic name `topic` matches (the name is not re-validated).
    pub fn matches_str(&self, topic: &str) -> bool {
        if self.literal {
            return &*self.text == topic;
        }
        let mut names = topic.split('.');
        for want in self.text.split('.') {
            match want {
                ">" => return names.next().is_some(),
                "*" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if names.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Pattern::new(&*s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        Pattern {
            text: t.0,
            literal: true,
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pattern::new(s)
    }
}

fn check(name: &str, what: &str, wildcards: bool) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return Err(Error::validation(format!(
            "{what} must be 1-{MAX_TOPIC_LEN} characters, got {}",
            name.len()
        )));
    }
    let count = name.split('.').count();
    for (i, seg) in name.split('.').enumerate() {
        if seg.is_empty() {
            return Err(Error::validation(format!(
                "{what} {name:?} has an empty segment"
            )));
        }
        if wildcards && seg == "*" {
            continue;
        }
        if wildcards && seg == ">" {
            if i + 1 != count {
                return Err(Error::validation(format!(
                    "{what} {name:?}: `>` is only allowed as the last segment"
                )));
            }
            continue;
        }
        if let Some(bad) = seg
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(Error::validation(format!(
                "{what} {name:?} has the character {bad:?}; segments are lowercase [a-z0-9_-]"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn topic_rules() {
        for ok in [
            "a",
            "user.created",
            "perf.slo_violation",
            "a-b.c_d.0",
            &"a".repeat(255),
        ] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "A",
            "user.Created",
            "a b",
            "a.*",
            "a.>",
            "é",
            &"a".repeat(256),
        ] {
            assert_eq!(
                Topic::new(bad).unwrap_err().code(),
                ErrorCode::Validation,
                "{bad}"
            );
        }
    }

    #[test]
    fn pattern_rules_and_matching() {
        let t = |s| Topic::new(s).unwrap();
        assert!(Pattern::new("a.>.b").is_err());
        assert!(Pattern::new("a.b*").is_err());
        assert!(Pattern::new(">").unwrap().matches(&t("x.y")));
        assert!(Pattern::new("*").unwrap().matches(&t("x")));
        assert!(!Pattern::new("*").unwrap().matches(&t("x.y")));
        assert!(!Pattern::new("a.>").unwrap().matches(&t("a")));
        assert!(Pattern::new("a.*.c").unwrap().matches(&t("a.b.c")));
        assert!(!Pattern::new("a.*.c").unwrap().matches(&t("a.b.d")));
        assert!(!Pattern::new("a.b").unwrap().matches(&t("a.b.c")));
        assert!(Pattern::new("a.b").unwrap().is_literal());
    }

    #[test]
    fn topics_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<Topic>("\"ok.topic\"").is_ok());
        assert!(serde_json::from_str::<Topic>("\"Bad\"").is_err());
    }
}

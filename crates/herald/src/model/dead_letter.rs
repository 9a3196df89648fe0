//! Dead letters: messages that will not be delivered, with why.
//!
//! Owns [`DeadLetter`] and [`FailureSource`], the one record every failure
//! source writes (DESIGN.md §4.12), and [`DeadLetterFilter`], which selects
//! dead letters to list, replay or purge. Storing them is each transport's
//! business; replaying (re-publishing) is the bus's.

use chrono::{DateTime, Utc};

use crate::model::envelope::Envelope;
pub use crate::model::envelope::{replays, REPLAYS_HEADER, REPLAY_OF_HEADER};
use crate::model::error::ErrorCode;
use crate::model::topic::Pattern;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureSource {
    /// A handler failed (retries exhausted or a terminal error).
    Handler,
    /// The message passed its `expires_at` before delivery.
    Expired,
    /// The payload could not be decoded for the subscriber.
    Decode,
    /// The outbox forwarder could not deliver it.
    Forwarder,
    /// The HTTP/WebSocket gateway could not accept it.
    Gateway,
}

impl FailureSource {
    /// Every source.
    pub const ALL: [FailureSource; 5] = [
        FailureSource::Handler,
        FailureSource::Expired,
        FailureSource::Decode,
        FailureSource::Forwarder,
        FailureSource::Gateway,
    ];

    /// The stable lowercase name stores keep (`handler`, `expired`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureSource::Handler => "handler",
            FailureSource::Expired => "expired",
            FailureSource::Decode => "decode",
            FailureSource::Forwarder => "forwarder",
            FailureSource::Gateway => "gateway",
        }
    }
}

impl std::str::FromStr for FailureSource {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        FailureSource::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| crate::Error::validation(format!("unknown failure source {s:?}")))
    }
}

/// One dead-lettered message and its failure metadata.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The store's id of this dead letter (for inspect, replay, purge).
    pub id: u64,
    /// The original envelope (topic, seq, correlation id, attempt).
    pub envelope: Envelope,
    /// The consumer group that gave up, if any.
    pub group: Option<String>,
    /// Why.
    pub reason: String,
    /// The failure's code.
    pub code: ErrorCode,
    /// When its first delivery attempt failed (for a message that never got
    /// a delivery, e.g. expired: when it was dead-lettered).
    pub first_failed_at: DateTime<Utc>,
    /// When it failed last and was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Where the failure came from.
    pub source: FailureSource,
}

/// A dead letter as store tables keep it, column by column: id, group,
/// code, reason, attempts, source, first failure and failure (ms since the
/// epoch), envelope JSON.
pub type DeadLetterRow = (
    i64,
    Option<String>,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Vec<u8>,
);

impl DeadLetter {
    /// A dead letter for `envelope`, failed now with `code` and `reason`,
    /// reported by `source`: not yet stored (`id` 0), in no group, its
    /// attempts the envelope's, its first failure now. The `with_` methods
    /// set what the writer knows beyond that.
    ///
    /// ```
    /// use herald::{DeadLetter, ErrorCode, FailureSource, Message, Payload, Publish};
    ///
    /// let envelope = Message::new("orders.placed", Payload::null())
    ///     .into_envelope(&"docs".into())
    ///     .unwrap();
    /// let letter = DeadLetter::new(envelope, FailureSource::Handler, ErrorCode::Validation, "no such sku")
    ///     .with_group(String::from("billing"));
    /// assert_eq!(letter.group.as_deref(), Some("billing"));
    /// assert_eq!(letter.attempts, 1);
    /// assert_eq!(letter.first_failed_at, letter.failed_at);
    /// ```
    pub fn new(
        envelope: Envelope,
        source: FailureSource,
        code: ErrorCode,
        reason: impl Into<String>,
    ) -> DeadLetter {
        let now = Utc::now();
        DeadLetter {
            id: 0,
            attempts: envelope.attempt(),
            envelope,
            group: None,
            reason: reason.into(),
            code,
            first_failed_at: now,
            failed_at: now,
            source,
        }
    }

    /// The consumer group that gave up (`None`: no group's).
    pub fn with_group(mut self, group: impl Into<Option<String>>) -> DeadLetter {
        self.group = group.into();
        self
    }

    /// When its first delivery attempt failed, where the writer kept it
    /// (`None` leaves it at the failure's own time).
    pub fn with_first_failure(mut self, at: Option<DateTime<Utc>>) -> DeadLetter {
        if let Some(at) = at {
            self.first_failed_at = at;
        }
        self
    }

    /// Delivery attempts made, where not the envelope's own count (a message
    /// that never got a delivery made none).
    pub fn with_attempts(mut self, attempts: u32) -> DeadLetter {
        self.attempts = attempts;
        self
    }

    /// Rebuild a dead letter from its stored columns; an unknown code reads
    /// as `INTERNAL`, an unknown source as `handler`.
    pub fn from_row(row: DeadLetterRow) -> crate::Result<DeadLetter> {
        let (id, group, code, reason, attempts, source, first_failed_ms, failed_ms, envelope) = row;
        let time = |ms| DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let envelope = Envelope::from_stored(&envelope).map_err(|e| {
            crate::Error::internal(format!(
                "a stored dead letter does not decode: {}",
                e.message()
            ))
        })?;
        Ok(DeadLetter {
            id: id.max(0) as u64,
            envelope,
            group,
            reason,
            code: code.parse().unwrap_or(ErrorCode::Internal),
            first_failed_at: time(first_failed_ms),
            failed_at: time(failed_ms),
            attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
            source: source.parse().unwrap_or(FailureSource::Handler),
        })
    }
}

/// The dead letters `filter` selects, oldest first, from a store that reads
/// its table in pages: `page(after)` returns the next rows with an id above
/// `after`, in id order (empty at the end). Matching is done here, because
/// patterns are herald's, not SQL's.
pub async fn select_pages<P, F>(
    filter: &DeadLetterFilter,
    mut page: P,
) -> crate::Result<Vec<DeadLetter>>
where
    P: FnMut(i64) -> F,
    F: std::future::Future<Output = crate::Result<Vec<DeadLetterRow>>>,
{
    let max = filter.max().unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut after = 0i64;
    while out.len() < max {
        let rows = page(after).await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        for row in rows {
            let d = DeadLetter::from_row(row)?;
            if filter.matches(&d) && out.len() < max {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Which dead letters to list, replay or purge; every set criterion must
/// hold. The default selects all.
///
/// ```
/// use herald::{dead_letter::DeadLetterFilter, ErrorCode};
/// let f = DeadLetterFilter::default().topic("orders.>").unwrap().code(ErrorCode::Validation);
/// # drop(f);
/// ```
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    topic: Option<Pattern>,
    group: Option<String>,
    code: Option<ErrorCode>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    ids: Option<Vec<u64>>,
    limit: Option<usize>,
    replays_below: Option<u32>,
}

impl DeadLetterFilter {
    /// Only dead letters whose topic matches `pattern`.
    pub fn topic(mut self, pattern: &str) -> crate::Result<Self> {
        self.topic = Some(Pattern::new(pattern)?);
        Ok(self)
    }
    /// Only those given up by consumer group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// Only those with error code `code`.
    pub fn code(mut self, code: ErrorCode) -> Self {
        self.code = Some(code);
        self
    }
    /// Only those that failed at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }
    /// Only those that failed before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }
    /// Only these ids.
    pub fn ids(mut self, ids: impl IntoIterator<Item = u64>) -> Self {
        self.ids = Some(ids.into_iter().collect());
        self
    }
    /// At most `n`, oldest first.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
    /// Only messages replayed fewer than `n` times before.
    pub fn replayed_fewer_than(mut self, n: u32) -> Self {
        self.replays_below = Some(n);
        self
    }
    /// The most to select, if bounded.
    pub fn max(&self) -> Option<usize> {
        self.limit
    }
    /// Whether `d` is selected (apart from the limit).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.topic
            .as_ref()
            .is_none_or(|p| p.matches(d.envelope.topic()))
            && self
                .group
                .as_ref()
                .is_none_or(|g| d.group.as_deref() == Some(g.as_str()))
            && self.code.is_none_or(|c| d.code == c)
            && self.since.is_none_or(|t| d.failed_at >= t)
            && self.until.is_none_or(|t| d.failed_at < t)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&d.id))
            && self.replays_below.is_none_or(|n| replays(&d.envelope) < n)
    }
}

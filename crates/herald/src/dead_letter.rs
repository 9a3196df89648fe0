//! Dead letters: messages that will not be delivered, with why.
//!
//! Owns [`DeadLetter`] and [`FailureSource`], the one record every failure
//! source writes (DESIGN.md §4.12), and [`DeadLetterFilter`], which selects
//! dead letters to list, replay or purge. Storing them is each transport's
//! business; replaying (re-publishing) is the bus's.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::envelope::Envelope;
use crate::error::ErrorCode;
use crate::topic::Pattern;

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

/// Dead letters selected on a bus: `.await` lists them (oldest first);
/// [`replay`](DeadLetters::replay) re-publishes them, [`purge`](DeadLetters::purge)
/// deletes them. Build with [`Bus::dead_letters`](crate::Bus::dead_letters).
///
/// ```
/// use herald::{Bus, ErrorCode, Message, Payload};
/// use futures_util::StreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// let bus = Bus::memory();
/// let mut sub = bus.subscribe_raw("orders").await?;
/// bus.publish(Message::new("orders", Payload::null())).await?;
/// sub.next().await.unwrap()?.term(ErrorCode::Validation, "bad order").await?;
///
/// let dead = bus.dead_letters().topic("orders").await?;
/// assert_eq!(dead[0].reason, "bad order");
/// let seqs = bus.dead_letters().ids([dead[0].id]).replay().await?;
/// assert_eq!(seqs, [2]);
/// assert!(bus.dead_letters().await?.is_empty());
/// # Ok(()) }
/// ```
#[must_use = "select dead letters, then .await, .replay() or .purge()"]
pub struct DeadLetters {
    bus: crate::Bus,
    filter: DeadLetterFilter,
    error: Option<crate::Error>,
}

impl crate::Bus {
    /// Select dead letters (all, until narrowed).
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            bus: self.clone(),
            filter: DeadLetterFilter::default(),
            error: None,
        }
    }
}

/// Header a replayed message carries: the id of the dead-lettered original.
pub const REPLAY_OF_HEADER: &str = "herald-replay-of";
/// Header a replayed message carries: how many times it has been replayed.
pub const REPLAYS_HEADER: &str = "herald-replays";

/// How many times `envelope` was replayed from the dead letters.
pub fn replays(envelope: &Envelope) -> u32 {
    envelope
        .header(REPLAYS_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl DeadLetters {
    /// Only topics matching `pattern`.
    pub fn topic(mut self, pattern: &str) -> Self {
        match self.filter.clone().topic(pattern) {
            Ok(f) => self.filter = f,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }
    /// Only those given up by consumer group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.filter = self.filter.group(group);
        self
    }
    /// Only those with error code `code`.
    pub fn code(mut self, code: ErrorCode) -> Self {
        self.filter = self.filter.code(code);
        self
    }
    /// Only those that failed at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.filter = self.filter.since(t);
        self
    }
    /// Only those that failed before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.filter = self.filter.until(t);
        self
    }
    /// Only these ids.
    pub fn ids(mut self, ids: impl IntoIterator<Item = u64>) -> Self {
        self.filter = self.filter.ids(ids);
        self
    }
    /// At most `n`, oldest first.
    pub fn limit(mut self, n: usize) -> Self {
        self.filter = self.filter.limit(n);
        self
    }
    /// Only messages replayed fewer than `n` times before.
    pub fn replayed_fewer_than(mut self, n: u32) -> Self {
        self.filter = self.filter.replayed_fewer_than(n);
        self
    }

    /// Re-publish the selected dead letters to their topics — each as a new
    /// message (new id, no idempotency key, header [`REPLAY_OF_HEADER`]
    /// naming the original, same correlation) — then delete them. Returns
    /// the new seqs. A crash between the two steps replays again next time:
    /// nothing is lost.
    pub async fn replay(self) -> crate::Result<Vec<u64>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let transport = &self.bus.inner.transport;
        let dead = transport.dead_letters(&self.filter).await?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let again: Vec<Envelope> = dead.iter().map(|d| d.envelope.replayed()).collect();
        let seqs = self.bus.publish(again).await?;
        let done = DeadLetterFilter::default().ids(dead.iter().map(|d| d.id));
        transport.purge_dead_letters(&done).await?;
        Ok(seqs)
    }

    /// Delete the selected dead letters; returns how many.
    pub async fn purge(self) -> crate::Result<u64> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.bus
            .inner
            .transport
            .purge_dead_letters(&self.filter)
            .await
    }
}

impl std::future::IntoFuture for DeadLetters {
    type Output = crate::Result<Vec<DeadLetter>>;
    type IntoFuture = crate::delivery::BoxFuture<'static, crate::Result<Vec<DeadLetter>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Some(e) = self.error {
                return Err(e);
            }
            self.bus.inner.transport.dead_letters(&self.filter).await
        })
    }
}

/// Replays a group's dead letters automatically; see
/// [`Bus::replay_dead_letters_after`](crate::Bus::replay_dead_letters_after).
/// Dropping it (or [`stop`](AutoReplay::stop)) stops the replays.
#[must_use = "automatic replay stops when this handle is dropped"]
#[derive(Debug)]
pub struct AutoReplay {
    task: tokio::task::JoinHandle<()>,
}

impl AutoReplay {
    /// Stop replaying.
    pub fn stop(self) {}
}

impl Drop for AutoReplay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Most automatic replays of one message, so a poison message settles in
/// the dead letters instead of circling.
pub const DEFAULT_MAX_AUTO_REPLAYS: u32 = 3;

impl crate::Bus {
    /// Opt group `group` into automatic replay: a message it dead-letters is
    /// replayed to its topic (as [`DeadLetters::replay`] does) once `after`
    /// has passed since it failed, at most `max_replays` times; after that
    /// it stays in the dead letters. Replay is to the topic: other
    /// subscribers see the message again too, marked with
    /// [`REPLAY_OF_HEADER`]. Runs while the returned handle lives and a
    /// tokio runtime is running.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = herald::Bus::memory();
    /// let replaying = bus.replay_dead_letters_after("billing", Duration::from_secs(60), 3);
    /// # drop(replaying);
    /// # }
    /// ```
    pub fn replay_dead_letters_after(
        &self,
        group: &str,
        after: Duration,
        max_replays: u32,
    ) -> AutoReplay {
        let bus = self.clone();
        let group = group.to_owned();
        let tick = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Ok(age) = chrono::Duration::from_std(after) else {
                    return;
                };
                let due = bus
                    .dead_letters()
                    .group(group.clone())
                    .until(Utc::now() - age)
                    .replayed_fewer_than(max_replays)
                    .replay()
                    .await;
                if let Err(e) = due {
                    if e.code() == ErrorCode::Unavailable {
                        return;
                    }
                }
            }
        });
        AutoReplay { task }
    }
}

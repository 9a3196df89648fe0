//! The dead letters of a bus: [`Bus::dead_letters`] selects them to list,
//! replay or purge, and [`Bus::replay_dead_letters_after`] replays a group's
//! automatically.
//!
//! A transport stores, lists and purges; replay is the bus's: it re-publishes
//! each selected dead letter as a new message (new id, no idempotency key, a
//! `herald-replay-of` header, a `herald-replays` count) and only then purges
//! it, so a crash in between replays twice rather than losing one. The record
//! itself is [`model::dead_letter`](crate::model::dead_letter)'s.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::bus::Bus;
use crate::model::dead_letter::{DeadLetter, DeadLetterFilter};
use crate::model::envelope::Envelope;
use crate::model::error::ErrorCode;

/// Dead letters selected on a bus: `.await` lists them (oldest first);
/// [`replay`](DeadLetters::replay) re-publishes them, [`purge`](DeadLetters::purge)
/// deletes them. Build with [`Bus::dead_letters`](Bus::dead_letters).
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
    bus: Bus,
    filter: DeadLetterFilter,
    error: Option<crate::model::error::Error>,
}

impl Bus {
    /// Select dead letters (all, until narrowed).
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            bus: self.clone(),
            filter: DeadLetterFilter::default(),
            error: None,
        }
    }
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
    /// message (new id, no idempotency key, header [`REPLAY_OF_HEADER`](crate::model::envelope::REPLAY_OF_HEADER)
    /// naming the original, same correlation) — then delete them. Returns
    /// the new seqs. A crash between the two steps replays again next time:
    /// nothing is lost.
    pub async fn replay(self) -> crate::model::error::Result<Vec<u64>> {
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
    pub async fn purge(self) -> crate::model::error::Result<u64> {
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
    type Output = crate::model::error::Result<Vec<DeadLetter>>;
    type IntoFuture =
        crate::model::delivery::BoxFuture<'static, crate::model::error::Result<Vec<DeadLetter>>>;

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
/// [`Bus::replay_dead_letters_after`](Bus::replay_dead_letters_after).
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

impl Bus {
    /// Opt group `group` into automatic replay: a message it dead-letters is
    /// replayed to its topic (as [`DeadLetters::replay`] does) once `after`
    /// has passed since it failed, at most `max_replays` times; after that
    /// it stays in the dead letters. Replay is to the topic: other
    /// subscribers see the message again too, marked with
    /// [`REPLAY_OF_HEADER`](crate::model::envelope::REPLAY_OF_HEADER). Runs while the returned handle lives and a
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

//! Dead-lettering, the part every store shares: the writes a store has
//! under way, how long its close and its listings wait for them, how soon
//! a message whose dead letter could not be written comes back, and the
//! warning a group's first give-up at `max_deliver` logs, and
//! [`Discards`]: what a store does instead of writing when its dead letters
//! are off (`HERALD_DEAD_LETTERS=off`).
//!
//! The rule itself — write the dead letter, then settle the message; if the
//! write fails, redeliver it — is the [`Queue`](crate::backend::queue::Queue)'s
//! (DESIGN.md §4.12). A store says how to write one letter
//! ([`QueueHost::dead_letter`](crate::backend::queue::QueueHost::dead_letter))
//! and counts its writes in one [`DeadLetterWrites`]; it does not retry,
//! spawn or log on its own. Durable groups of the SQL stores write a dead
//! letter in the transaction that settles the lease, so they need none of
//! this.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::DeadLetters;
use crate::model::dead_letter::DeadLetter;
use crate::observe::instrument::DEAD_LETTERS_DISCARDED;
use crate::observe::metrics::Metrics;

/// How long a store's close, and a listing of its dead letters, waits for
/// the dead-letter writes under way: the same on every store.
pub const DEAD_LETTER_WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long a message whose dead letter could not be written waits before
/// it is delivered again (with one more attempt).
pub const DEAD_LETTER_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The dead-letter writes one store has under way; clones share the count.
///
/// ```
/// use herald::backend::dead_lettering::DeadLetterWrites;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let writes = DeadLetterWrites::default();
/// let write = writes.start();
/// assert_eq!(writes.under_way(), 1);
/// drop(write);
/// assert!(writes.settled(std::time::Duration::from_millis(1)).await);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeadLetterWrites(Arc<watch::Sender<usize>>);

impl Default for DeadLetterWrites {
    fn default() -> Self {
        DeadLetterWrites(Arc::new(watch::channel(0).0))
    }
}

impl DeadLetterWrites {
    /// Count one write until the returned guard drops.
    pub fn start(&self) -> WriteUnderWay {
        self.0.send_modify(|n| *n += 1);
        WriteUnderWay(self.0.clone())
    }

    /// How many writes are under way.
    pub fn under_way(&self) -> usize {
        *self.0.borrow()
    }

    /// Wait up to `wait` for every write under way to end; false when some
    /// were still going.
    pub async fn settled(&self, wait: Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Groups [`gave_up_at_max_deliver`] has warned about, up to
/// [`WARNED_GROUPS`] names (past that it warns no more).
static WARNED: parking_lot::Mutex<Option<std::collections::HashSet<String>>> =
    parking_lot::Mutex::new(None);

/// The most group names [`gave_up_at_max_deliver`] remembers.
pub const WARNED_GROUPS: usize = 10_000;

/// A store gave up on an event of `group` (`None`: a group-less
/// subscription) on `topic` because it had `max_deliver` attempts: logs it
/// at warn the first time in this process for that group, since a default
/// (`HERALD_MAX_DELIVER`, 5) dead-letters without anyone asking. Returns
/// whether it logged.
///
/// ```
/// use herald::backend::dead_lettering::gave_up_at_max_deliver;
/// assert!(gave_up_at_max_deliver(Some("doc-billing"), "orders.placed", 5));
/// assert!(!gave_up_at_max_deliver(Some("doc-billing"), "orders.placed", 5));
/// ```
pub fn gave_up_at_max_deliver(group: Option<&str>, topic: &str, max_deliver: u32) -> bool {
    let name = group.unwrap_or_default();
    {
        let mut warned = WARNED.lock();
        let warned = warned.get_or_insert_with(Default::default);
        if warned.len() >= WARNED_GROUPS || !warned.insert(name.to_owned()) {
            return false;
        }
    }
    tracing::warn!(
        group = name,
        topic,
        max_deliver,
        "first event this group dead-letters for having max_deliver attempts (set HERALD_MAX_DELIVER, or .max_deliver(n) on the group, to change it)"
    );
    true
}

/// One dead-letter write under way (see [`DeadLetterWrites::start`]).
#[derive(Debug)]
pub struct WriteUnderWay(Arc<watch::Sender<usize>>);

impl Drop for WriteUnderWay {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A store's verdict on each dead letter under `HERALD_DEAD_LETTERS`: keep
/// it (write it where the store keeps them), or, when dead letters are
/// off, discard it: log it at warn with what finds its message, count it
/// in [`DEAD_LETTERS_DISCARDED`] of the first registry attached
/// ([`attach`](Self::attach)), and let the store settle the message as
/// if the write had succeeded. Clones share the registry.
///
/// ```
/// use herald::backend::dead_lettering::Discards;
/// use herald::config::DeadLetters;
/// use herald::{DeadLetter, ErrorCode, FailureSource, Message, Payload, Publish};
/// use herald::metrics::Metrics;
///
/// let letter = DeadLetter::new(
///     Message::new("orders.placed", Payload::null()).into_envelope(&"docs".into()).unwrap(),
///     FailureSource::Handler,
///     ErrorCode::Validation,
///     "no such sku",
/// );
/// assert!(!Discards::new(&DeadLetters::StoreDefault).discard(&letter));
/// let off = Discards::new(&DeadLetters::Off);
/// let metrics = Metrics::new();
/// off.attach(&metrics);
/// assert!(off.discard(&letter));
/// let counted = metrics.counter("herald_dead_letters_discarded_total", &[("source", "handler")]);
/// assert_eq!(counted.get(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Discards {
    off: bool,
    metrics: Arc<OnceLock<Metrics>>,
}

impl Discards {
    /// The verdicts for a store configured with `to`.
    pub fn new(to: &DeadLetters) -> Discards {
        Discards {
            off: to.is_off(),
            metrics: Arc::default(),
        }
    }

    /// Count discards in `metrics` (the first registry attached keeps them).
    pub fn attach(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    /// Whether `letter` is discarded rather than written; a discarded one is
    /// logged and counted here.
    pub fn discard(&self, letter: &DeadLetter) -> bool {
        if !self.off {
            return false;
        }
        let env = &letter.envelope;
        tracing::warn!(
            topic = %env.topic(),
            seq = env.seq(),
            group = letter.group.as_deref().unwrap_or_default(),
            message_id = %env.id(),
            correlation_id = %env.correlation_id(),
            causation_id = ?env.causation_id(),
            source = letter.source.as_str(),
            code = %letter.code,
            attempts = letter.attempts,
            reason = %letter.reason,
            "dead letter discarded (HERALD_DEAD_LETTERS=off)"
        );
        if let Some(metrics) = self.metrics.get() {
            metrics
                .counter(
                    DEAD_LETTERS_DISCARDED,
                    &[("source", letter.source.as_str())],
                )
                .inc();
        }
        true
    }
}

//! Dead-lettering, the part every store shares: the writes a store has
//! under way, how long its close and its listings wait for them, and how
//! soon a message whose dead letter could not be written comes back.
//!
//! The rule itself — write the dead letter, then settle the message; if the
//! write fails, redeliver it — is the [`Queue`](crate::backend::queue::Queue)'s
//! (DESIGN.md §4.12). A store says how to write one letter
//! ([`QueueHost::dead_letter`](crate::backend::queue::QueueHost::dead_letter))
//! and counts its writes in one [`DeadLetterWrites`]; it does not retry,
//! spawn or log on its own. Durable groups of the SQL stores write a dead
//! letter in the transaction that settles the lease, so they need none of
//! this.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

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

/// One dead-letter write under way (see [`DeadLetterWrites::start`]).
#[derive(Debug)]
pub struct WriteUnderWay(Arc<watch::Sender<usize>>);

impl Drop for WriteUnderWay {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

//! Following a durable log into a delivery queue: the shared reader of the
//! store-backed transports.
//!
//! Owns [`follow`]: read a log page by page in its commit order (`pos`),
//! decode each stored envelope, keep what the subscription wants from its
//! start on, and push it into a [`Queue`], which delivers. The transport
//! supplies the page reader and a wake-up (the highest committed `pos`);
//! an idle tail also re-reads every `idle` to cover missed wake-ups. A full
//! queue makes the tail wait; nothing is lost, the log holds it. Such
//! subscriptions commit nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::queue::Queue;

/// The topics of `spec` when every pattern is a literal topic (a store can
/// then read only those topics' events), else `None`.
pub fn literal_topics(spec: &crate::SubscribeSpec) -> Option<Vec<String>> {
    spec.patterns
        .iter()
        .map(|p| p.is_literal().then(|| p.as_str().to_owned()))
        .collect()
}

/// Feed `queue` from the log after `cursor` until the queue closes or
/// `stopped()` says the store has; `page(after)` reads the next stored
/// `(pos, envelope JSON)` rows after a position, in `pos` order.
pub async fn follow<P, F>(
    queue: Arc<Queue>,
    mut cursor: i64,
    mut committed: watch::Receiver<i64>,
    idle: Duration,
    stopped: impl Fn() -> bool,
    mut page: P,
) where
    P: FnMut(i64) -> F,
    F: Future<Output = Result<Vec<(i64, Vec<u8>)>>>,
{
    let spec = queue.spec().clone();
    loop {
        if queue.is_closed() {
            return;
        }
        if stopped() {
            queue.close();
            return;
        }
        committed.borrow_and_update();
        let rows = match page(cursor).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "a subscription could not read the log; retrying");
                tokio::time::sleep(idle).await;
                continue;
            }
        };
        if rows.is_empty() {
            if let Ok(Err(_)) = tokio::time::timeout(idle, committed.changed()).await {
                // The signal's sender is gone (the store is closing).
                tokio::time::sleep(idle).await;
            }
            continue;
        }
        let mut wanted = Vec::with_capacity(rows.len());
        for (pos, bytes) in rows {
            cursor = pos;
            let env = match Envelope::from_stored(&bytes) {
                Ok(env) => env,
                Err(e) => {
                    tracing::error!(pos, error = %e, "skipping an undecodable stored event");
                    continue;
                }
            };
            if spec.wants(env.topic().as_str(), env.kind()) && spec.start.admits(&env) {
                wanted.push(Arc::new(env));
            }
        }
        if !queue.push(wanted).await {
            return;
        }
    }
}

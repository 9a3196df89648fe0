//! Following a durable log into a delivery queue: the shared reader of the
//! store-backed transports.
//!
//! Owns [`follow`]: read a log page by page in its commit order (`pos`),
//! decode each stored envelope, keep what the subscription wants from its
//! start on, and push it into a [`Queue`], which delivers. The transport
//! supplies the page reader and a wake-up (the highest committed `pos`);
//! an idle tail also re-reads every `idle` to cover missed wake-ups. A full
//! queue makes the tail wait; nothing is lost, the log holds it. Such
//! subscriptions commit nothing. A page is bounded in rows by the store's
//! query and in bytes by [`take_page`] (at most [`PAGE_BYTES`] past its
//! first row), so large events never make a tail hold hundreds of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::queue::Queue;
use crate::model::envelope::Envelope;
use crate::model::error::Result;

/// The bytes of stored envelopes one page holds, past its first row.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The rows of a page query, read as they come until `max_bytes` of
/// envelopes are in hand (the first row always is): the query's row limit
/// bounds a page of small events, this its memory for large ones.
pub async fn take_page<S, E>(
    rows: S,
    max_bytes: usize,
) -> std::result::Result<Vec<(i64, Vec<u8>)>, E>
where
    S: futures_core::Stream<Item = std::result::Result<(i64, Vec<u8>), E>>,
{
    use futures_util::TryStreamExt;
    let mut rows = std::pin::pin!(rows);
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(row) = rows.try_next().await? {
        bytes += row.1.len();
        out.push(row);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_stops_at_its_byte_bound_but_always_has_a_row() {
        let rows = |sizes: &[usize]| {
            let items: Vec<std::result::Result<(i64, Vec<u8>), ()>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Ok((i as i64 + 1, vec![0u8; *n])))
                .collect();
            futures_util::stream::iter(items)
        };
        let page = take_page(rows(&[10, 10, 10, 10]), 25).await.unwrap();
        assert_eq!(page.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        let page = take_page(rows(&[100, 10]), 25).await.unwrap();
        assert_eq!(page.len(), 1, "a row larger than the bound comes alone");
        let page = take_page(rows(&[1, 1]), 25).await.unwrap();
        assert_eq!(page.len(), 2);
        let failing = futures_util::stream::iter(vec![Ok((1, vec![])), Err("boom")]);
        assert_eq!(take_page(failing, 25).await.unwrap_err(), "boom");
    }
}

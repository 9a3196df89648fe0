//! What closing a bus ends (DESIGN.md §4.15), once for every transport.
//!
//! Owns [`Lifecycle`]: the bus's open subscriptions and its closed state.
//! A subscribe in flight when the bus closes gives up at once with
//! `UNAVAILABLE` (the transport's work goes on in a task of its own, and
//! what it opens is closed, so nothing is left half made); a subscription
//! the transport opens after the close began is closed and refused the
//! same way; and every subscription the bus opened is closed after the
//! transport's own close, so no stream outlives its bus even where a
//! transport missed one.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::backend::subscription::{CloseHandle, SubscribeSpec, Subscription};
use crate::backend::transport::DynTransport;
use crate::model::error::{Error, Result};

/// One bus's open subscriptions and whether it is closed.
pub(crate) struct Lifecycle {
    /// Turns `true` when the bus begins to close: wakes subscribes in flight.
    closing: watch::Sender<bool>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    closed: bool,
    next: u64,
    subscriptions: HashMap<u64, CloseHandle>,
}

/// A subscription's entry in its bus's [`Lifecycle`], removed when the
/// subscription is dropped.
pub(crate) struct Registration {
    lifecycle: Weak<Lifecycle>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(lifecycle) = self.lifecycle.upgrade() {
            lifecycle.open.lock().subscriptions.remove(&self.id);
        }
    }
}

impl Lifecycle {
    pub(crate) fn new() -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            closing: watch::channel(false).0,
            open: Mutex::new(Open::default()),
        })
    }

    /// Open a subscription on `transport`, unless the bus closes first.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        transport: Arc<dyn DynTransport>,
        spec: SubscribeSpec,
    ) -> Result<Subscription> {
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(Error::closed("subscribe"));
        }
        let mut opening = Box::pin(async move { transport.subscribe(spec).await });
        tokio::select! {
            biased;
            opened = &mut opening => self.adopt(opened?),
            _ = closing.wait_for(|closed| *closed) => {
                // The transport finishes what it began; a subscription it
                // opens is dropped there, which closes it.
                tokio::spawn(opening);
                Err(Error::closed("subscribe"))
            }
        }
    }

    /// Track `sub` until it is dropped; closed and refused when the bus
    /// began to close while the transport opened it.
    fn adopt(self: &Arc<Self>, sub: Subscription) -> Result<Subscription> {
        let id = {
            let mut open = self.open.lock();
            if open.closed {
                None
            } else {
                let id = open.next;
                open.next += 1;
                open.subscriptions.insert(id, sub.close_handle());
                Some(id)
            }
        };
        match id {
            Some(id) => Ok(sub.registered(Registration {
                lifecycle: Arc::downgrade(self),
                id,
            })),
            None => {
                sub.close();
                Err(Error::closed("subscribe"))
            }
        }
    }

    /// Begin closing: later subscribes fail, those in flight give up.
    /// Returns the close handles of the subscriptions open now, for the
    /// bus to close once its transport has closed.
    pub(crate) fn close(&self) -> Vec<CloseHandle> {
        let open: Vec<CloseHandle> = {
            let mut open = self.open.lock();
            open.closed = true;
            open.subscriptions.drain().map(|(_, h)| h).collect()
        };
        self.closing.send_replace(true);
        open
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::Faults;
    use crate::{Bus, ErrorCode};

    /// A subscribe the transport is slow to open fails with `UNAVAILABLE`
    /// as soon as the bus closes, not when the transport is done with it.
    #[tokio::test(start_paused = true)]
    async fn a_subscribe_in_flight_gives_up_when_the_bus_closes() {
        let faults = Faults::new();
        let bus = faults.wrap_bus(&Bus::memory());
        faults.delay_subscribes(Some(Duration::from_secs(3600)));
        let began = tokio::time::Instant::now();
        let opening = tokio::spawn({
            let bus = bus.clone();
            async move { bus.subscribe_raw("t").group("g").await }
        });
        // The subscribe task runs up to the transport's wait.
        tokio::task::yield_now().await;
        bus.close().await.unwrap();
        let err = opening.await.unwrap().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the subscribe waited for the transport: {:?}",
            began.elapsed()
        );
        let err = bus.subscribe_raw("t").await.unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::Unavailable,
            "a subscribe after close"
        );
    }
}

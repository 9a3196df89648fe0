//! Consumer-side dedupe: a redelivered message whose effects already ran is
//! acked without running again.
//!
//! Owns the [`Dedupe`] layer. Ids are recorded per consumer group once a
//! message's effects are durable ([`Layer::handled`]), not when the handler
//! returns, so a message whose effects failed to publish runs again. The
//! stores of processed ids are the backend's ([`DedupeStore`], and
//! [`MemoryDedupe`], the in-process one, re-exported here); each durable
//! store keeps its own (`Dedupe::in_store`, made in `bus`).

use std::sync::Arc;

pub use crate::backend::dedupe::{DedupeStore, MemoryDedupe, DEFAULT_WINDOW};
use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::Result;
use crate::runtime::middleware::{Effects, Layer, Next};

/// Skips messages the group already processed, by envelope id.
///
/// ```
/// use herald::dedupe::{Dedupe, MemoryDedupe};
/// let handler = herald::Bus::memory()
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(MemoryDedupe::default()));
/// # drop(handler);
/// ```
#[derive(Clone)]
pub struct Dedupe {
    store: Arc<dyn DedupeStore>,
}

impl Dedupe {
    /// Dedupe against `store`.
    pub fn new(store: impl DedupeStore) -> Self {
        Dedupe {
            store: Arc::new(store),
        }
    }
}

impl Dedupe {
    /// Dedupe against `store`, shared.
    pub(crate) fn shared(store: Arc<dyn DedupeStore>) -> Self {
        Dedupe { store }
    }

    /// Where this layer keeps processed ids.
    pub fn store(&self) -> &dyn DedupeStore {
        &*self.store
    }
}

impl Layer for Dedupe {
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            if self.store.seen(next.group(), envelope.id()).await? {
                return Ok(Effects::new());
            }
            next.run(envelope).await
        })
    }

    fn handled<'a>(
        &'a self,
        group: &'a str,
        envelope: &'a Envelope,
    ) -> Option<BoxFuture<'a, Result<()>>> {
        Some(self.store.record(group, envelope.id()))
    }
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").finish_non_exhaustive()
    }
}

//! Where a handler's [`Dedupe`](crate::dedupe::Dedupe) layer remembers the
//! message ids a group has processed: the [`DedupeStore`] a store implements
//! (SQLite's `processed` table; the in-memory one is the layer's own).

use uuid::Uuid;

use crate::model::delivery::BoxFuture;
use crate::model::error::Result;

/// Where processed message ids are remembered, per consumer group.
pub trait DedupeStore: Send + Sync + 'static {
    /// Whether `group` already processed message `id` (within the window).
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>>;
    /// Remember that `group` processed message `id`.
    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>>;
}

//! herald's embedded durable store: an event log in one SQLite file.
//!
//! [`SqliteStore`] appends events durably (on disk before `Ok`: WAL,
//! `synchronous=FULL` by default); concurrent appends share commits (group
//! commit); each topic's `seq` starts at 1 with no gaps, across tasks and
//! across processes sharing the file; a repeated `idempotency_key` within the
//! dedupe window returns the original `seq`; any topic replays from a `seq`
//! or a time. Subscriptions, consumer groups and the outbox build on this log
//! (in progress: the store does not implement `herald::Transport` yet).
//!
//! Driver: sqlx, so the outbox can run inside a user's own
//! `sqlx::Transaction`.

mod append;
mod config;
mod dead_letters;
pub mod dedupe;
mod group;
pub mod outbox;
mod retention;
mod schema;
mod store;
mod tail;
mod transport;
mod writer;

pub use config::{
    SqliteConfig, Synchronous, DEFAULT_BUSY_TIMEOUT, DEFAULT_DEDUPE_WINDOW,
    DEFAULT_GROUP_COMMIT_MAX, DEFAULT_MAX_DELIVER, DEFAULT_PATH, DEFAULT_POLL_INTERVAL,
};
pub use dedupe::SqliteDedupe;
pub use herald::retention::{Retention, DEFAULT_RETENTION_INTERVAL};
pub use outbox::Outbox;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
pub use transport::FEATURES;

//! herald's embedded durable store: an event log in one SQLite file.
//!
//! [`SqliteStore`] appends events durably (on disk before `Ok`: WAL,
//! `synchronous=FULL` by default); concurrent appends share commits (group
//! commit); each topic's `seq` starts at 1 with no gaps, across tasks and
//! across processes sharing the file; a repeated `idempotency_key` within the
//! dedupe window returns the original `seq`; any topic replays from a `seq`
//! or a time. It is a [`herald::Transport`]: group-less subscriptions tail
//! the log, durable consumer groups are shared across processes, the
//! [`Outbox`] writes events in the caller's own transaction, and dead letters,
//! replay and retention live in the same file.
//!
//! Driver: sqlx, so the outbox can run inside a user's own
//! `sqlx::Transaction`.

// The modules, bottom first: `conn` (the connection and shared state, on
// `config` and the leaf `request`) → `log` → `tail`, `group` →
// `dead_letters` → `inspect` → `transport`, with `store` (the public handle)
// at the top. No module imports one above it.
mod backup;
mod config;
mod conn;
pub mod contracts;
mod dead_letters;
pub mod dedupe;
mod group;
mod inspect;
mod log;
mod member;
pub mod outbox;
mod parked;
mod processed;
mod request;
mod retention;
mod schema;
mod schemas;
mod store;
mod tail;
mod transport;
mod writer;

pub use backup::{backup, Backup};
pub use config::{
    SqliteConfig, Synchronous, DEFAULT_BUSY_TIMEOUT, DEFAULT_DEDUPE_WINDOW,
    DEFAULT_GROUP_COMMIT_MAX, DEFAULT_MAX_DELIVER, DEFAULT_PATH, DEFAULT_POLL_INTERVAL, KEYS,
};
pub use contracts::SqliteSchemas;
pub use dedupe::SqliteDedupe;
pub use herald::backend::retention::{Retention, DEFAULT_RETENTION_INTERVAL};
pub use outbox::Outbox;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
pub use transport::FEATURES;

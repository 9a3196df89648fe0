//! herald on PostgreSQL: an event log fed through a transactional outbox.
//!
//! Publishers insert into an outbox table — inside their own transaction
//! when they want the event to exist if and only if their data commits
//! ([`PgStore::publish_in`]). One sequencer per schema turns committed
//! outbox rows into events with gap-free per-topic `seq`s, woken by the
//! commit's NOTIFY (a slow poll covers missed notifications), and notifies
//! subscribers in turn. See `ARCHITECTURE.md` for the map.
//!
//! The modules, bottom first: `config`; `conn` (the connection and the
//! state every part shares); `schema`, `outbox`, `dead_letters`,
//! `retention`; `log`, `sequencer`; `settle`, `group`; `tail`; `inspect`; then
//! `store` (the public handle) and `transport` (its trait impls) at the
//! top. Each imports only modules listed before it. This file owns only the module list and
//! the public re-exports.

mod config;
mod conn;
mod contracts;
mod dead_letters;
mod dedupe;
mod group;
mod inspect;
mod log;
mod outbox;
mod retention;
mod schema;
mod sequencer;
mod settle;
mod store;
mod tail;
mod transport;

pub use config::{
    PgConfig, DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_POLL_INTERVAL, DEFAULT_POOL_SIZE,
    DEFAULT_PUBLISH_TIMEOUT, DEFAULT_SCHEMA, KEYS,
};
pub use contracts::PgSchemas;
pub use dedupe::{PgDedupe, PURGE_BATCH};
pub use herald::backend::retention::Retention;
pub use schema::SCHEMA_VERSION;
pub use store::PgStore;
pub use transport::FEATURES;

//! herald on NATS JetStream.
//!
//! Every topic is a JetStream stream of its own, on subjects
//! `<prefix>.$part.<n>.<topic>` (herald's events, partitioned by key) and
//! `<prefix>.<topic>` (plain clients'), so a topic's `seq` is its stream's
//! sequence: from 1, gap-free, kept by the server. Envelopes travel as `Herald-*` headers and
//! the payload as the body, so plain NATS clients read herald's events and
//! publish events herald consumes; `idempotency_key` is `Nats-Msg-Id`,
//! deduplicated within the streams' duplicate window. Group-less
//! subscriptions read through ordered consumers; a consumer group's
//! processes split its partitions and each reads its own from JetStream;
//! dead letters go to one dead-letter stream. See `ARCHITECTURE.md` for the map.

// Bottom up (ARCHITECTURE.md): the leaves `config`, `names`, `errors`,
// `gather`;
// `conn` (the connection and shared state); `payload`, `codec`; `log`;
// `tail`, and `leader_lease`, `group_record`, `protocol` under `group`;
// `dead_letters`; `inspect`; `commands`; `transport` and `store` at the top.
mod codec;
mod commands;
mod config;
mod conn;
mod contracts;
mod dead_letters;
mod errors;
mod gather;
mod group;
mod group_record;
mod inspect;
mod leader_lease;
mod log;
mod names;
mod payload;
mod processed;
mod protocol;
mod store;
mod tail;
mod transport;

pub use codec::PLAIN_SOURCE;
pub use commands::{ERROR_CODE, ERROR_MESSAGE};
pub use config::{
    NatsConfig, Storage, DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_DELIVER, DEFAULT_PARTITIONS,
    DEFAULT_REPLICAS, DEFAULT_REQUEST_TIMEOUT, KEYS, MAX_PARTITIONS,
};
pub use contracts::NatsSchemas;
pub use herald::backend::retention::Retention;
pub use payload::PAYLOAD_REF;
pub use processed::NatsDedupe;
pub use store::NatsStore;
pub use transport::FEATURES;

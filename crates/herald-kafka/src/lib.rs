//! herald on Kafka (any Kafka-protocol broker), through librdkafka.
//!
//! A herald topic is the Kafka topic `<environment>.<topic>`; an event's
//! `key` is its record key, so Kafka's partitioning keeps each key in order;
//! `seq` is the record's offset + 1 in its partition (gap-free and
//! increasing per partition; per topic on a one-partition topic). The
//! envelope travels as Kafka headers (`message_id`, `correlation_id`, …, see
//! [`codec`]) plus the payload as the value, so plain Kafka clients read
//! herald's events and publish events herald consumes. Consumer groups are
//! Kafka consumer groups (`<environment>.<group>`) with offsets committed on
//! ack; group-less subscriptions read every partition in no group; dead
//! letters go to `<environment>.dead_letters`. See `ARCHITECTURE.md` for
//! the map and the trade-offs.

pub mod codec;
mod command_state;
pub mod commands;
pub mod config;
mod conn;
mod contracts;
mod dead_letters;
mod dedupe;
mod errors;
mod feed;
mod group;
mod inspect;
mod log;
mod processed;
pub mod rebalance;
mod store;
mod tail;
mod transport;

pub use config::{Acks, Compression, KafkaConfig, OffsetReset, KEYS};
pub use conn::client_config;
pub use contracts::KafkaSchemas;
pub use log::{
    ERROR_TYPE, FAILURE_REASON, FAILURE_TIMESTAMP, ORIGINAL_OFFSET, ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
};
pub use processed::KafkaDedupe;
pub use rebalance::{RebalanceKind, Rebalanced};
pub use store::KafkaStore;
pub use transport::FEATURES;

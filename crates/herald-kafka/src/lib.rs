//! herald on Kafka (issue 10, in progress): today the transport's
//! configuration — every `HERALD_KAFKA_*` key, validated, and the
//! librdkafka properties it becomes. The transport itself (rdkafka
//! producer and consumer groups) builds on it next.

pub mod config;

pub use config::{Acks, Compression, KafkaConfig, OffsetReset};

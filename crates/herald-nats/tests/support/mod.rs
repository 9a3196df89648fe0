//! What the NATS tests share: the server's address and a fresh prefix per
//! bus, so tests run in parallel against one server.

#![allow(dead_code)]

use herald_nats::NatsConfig;

/// `HERALD_TEST_NATS_URL`, or the local server.
pub fn url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A configuration under a prefix no other test uses, with streams in
/// memory so the shared server's disk is spared.
pub fn fresh_config() -> NatsConfig {
    let unique = format!("t{:016x}", fastrand::u64(..));
    NatsConfig::new(url()).prefix(format!("herald-test.{unique}"))
}

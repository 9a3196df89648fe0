//! The conformance suite on the in-memory transport.

use herald::config::DeliveryConfig;
use herald::memory::{MemoryConfig, MemoryTransport};
use herald::Bus;

async fn with_delivery(delivery: DeliveryConfig) -> Bus {
    let config = MemoryConfig::default().delivery(delivery);
    Bus::new(MemoryTransport::new(config).expect("a valid memory config"))
}

herald_conformance::conformance_tests!(|| async { Bus::memory() }, configured = with_delivery,);

//! The whole conformance suite on NATS JetStream, each scenario under a
//! fresh subject prefix.

mod support;

use herald::Bus;
use herald_conformance::Restartable;
use herald_nats::{NatsConfig, NatsStore};

async fn open(config: NatsConfig) -> Bus {
    Bus::new(NatsStore::open(config).await.expect("open a store"))
}

async fn fresh_bus() -> Bus {
    open(support::fresh_config()).await
}

async fn restartable_bus() -> Restartable {
    let config = support::fresh_config();
    let bus = open(config.clone()).await;
    Restartable::new(bus, move || open(config.clone()))
}

herald_conformance::conformance_tests!(fresh_bus, restart = restartable_bus);

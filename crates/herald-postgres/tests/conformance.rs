//! The whole conformance suite on PostgreSQL, each scenario in a fresh
//! schema.

mod support;

use herald::Bus;
use herald_conformance::Restartable;
use herald_postgres::{PgConfig, PgStore};

async fn open(config: PgConfig) -> Bus {
    Bus::new(PgStore::open(config).await.expect("open a store"))
}

async fn fresh_bus() -> Bus {
    open(support::fresh_config().await).await
}

async fn restartable_bus() -> Restartable {
    let config = support::fresh_config().await;
    let bus = open(config.clone()).await;
    Restartable::new(bus, move || open(config.clone()))
}

herald_conformance::conformance_tests!(fresh_bus, restart = restartable_bus);

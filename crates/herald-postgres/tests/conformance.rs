//! The whole conformance suite on PostgreSQL, each scenario in a fresh
//! schema.

mod support;

use herald::Bus;
use herald_conformance::{Restartable, Retained};
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

async fn retained_bus(policy: herald::retention::RetentionPolicy) -> Retained {
    let config = support::fresh_config().await.with_retention(policy);
    let store = PgStore::open(config).await.expect("open a store");
    Retained::new(Bus::new(store.clone()), move || {
        let store = store.clone();
        async move { store.apply_retention().await }
    })
}

herald_conformance::conformance_tests!(
    fresh_bus,
    restart = restartable_bus,
    retention = retained_bus
);

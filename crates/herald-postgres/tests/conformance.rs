//! The whole conformance suite on PostgreSQL, each scenario in a fresh
//! schema.

mod support;

use herald::Bus;
use herald_conformance::{BreakableDeadLetters, Restartable, Retained};
use herald_postgres::{PgConfig, PgStore};
use sqlx::{Connection, PgConnection};

async fn open(config: PgConfig) -> Bus {
    Bus::new(PgStore::open(config).await.expect("open a store"))
}

async fn fresh_bus() -> Bus {
    open(support::fresh_config().await).await
}

async fn with_delivery(delivery: herald::config::DeliveryConfig) -> Bus {
    open(support::fresh_config().await.delivery(delivery)).await
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

/// A bus whose store refuses dead letters while a trigger on its
/// `dead_letters` table says so.
async fn breakable_bus() -> BreakableDeadLetters {
    let config = support::fresh_config().await;
    let schema = config.schema_name().to_owned();
    let bus = open(config).await;
    BreakableDeadLetters::new(bus, move |broken| set_broken(schema.clone(), broken))
}

/// Add or drop the trigger that refuses dead letters in `schema`, over a
/// connection of the test's own.
async fn set_broken(schema: String, broken: bool) {
    let mut conn = PgConnection::connect(&support::url())
        .await
        .expect("connect");
    let statements = if broken {
        vec![
            format!(
                "CREATE FUNCTION {schema}.conformance_refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'dead letters broken by the conformance suite'; END $$"
            ),
            format!(
                "CREATE TRIGGER conformance_broken BEFORE INSERT ON {schema}.dead_letters \
                 FOR EACH ROW EXECUTE FUNCTION {schema}.conformance_refuse()"
            ),
        ]
    } else {
        vec![format!(
            "DROP FUNCTION {schema}.conformance_refuse() CASCADE"
        )]
    };
    for sql in statements {
        sqlx::query(&sql).execute(&mut conn).await.expect(&sql);
    }
}

herald_conformance::conformance_tests!(
    fresh_bus,
    configured = with_delivery,
    restart = restartable_bus,
    retention = retained_bus,
    dead_letter_faults = breakable_bus,
);

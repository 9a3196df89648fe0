//! A fresh schema per store, on the test server (`HERALD_TEST_PG_URL`,
//! default the machine's local PostgreSQL), so tests run in parallel.
//! Schemas left by earlier runs (named with their creation time) are
//! dropped once they are an hour old.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_postgres::PgConfig;

pub fn url() -> String {
    std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A config for a new, unique schema.
pub async fn fresh_config() -> PgConfig {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    drop_stale_schemas(now).await;
    let schema = format!("ht_{now}_{:08x}", fastrand::u32(..));
    PgConfig::new(url())
        .schema(schema)
        .poll_interval(Duration::from_millis(200))
}

async fn drop_stale_schemas(now: u64) {
    let Ok(pool) = sqlx::PgPool::connect(&url()).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ht\\_%'")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    for name in names {
        let born = name.split('_').nth(1).and_then(|t| t.parse::<u64>().ok());
        if born.is_some_and(|t| t + 3600 < now) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&pool)
                .await;
        }
    }
    pool.close().await;
}

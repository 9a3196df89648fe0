//! The whole conformance suite on the SQLite store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use herald::Bus;
use herald_conformance::{BreakableDeadLetters, Restartable, Retained};
use herald_sqlite::{SqliteConfig, SqliteStore};
use sqlx::{Connection, SqliteConnection};

/// A directory for this run's stores under cargo's per-target temp dir;
/// earlier runs' directories are removed when the first store opens.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("herald-sqlite-conformance-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("herald-sqlite-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    })
}

fn fresh_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    dir().join(format!("store-{}.db", N.fetch_add(1, Ordering::Relaxed)))
}

async fn open(path: PathBuf) -> Bus {
    Bus::new(
        SqliteStore::open(SqliteConfig::new(path))
            .await
            .expect("open store"),
    )
}

async fn fresh_bus() -> Bus {
    open(fresh_path()).await
}

async fn with_delivery(delivery: herald::config::DeliveryConfig) -> Bus {
    let config = SqliteConfig::new(fresh_path()).delivery(delivery);
    Bus::new(SqliteStore::open(config).await.expect("open store"))
}

async fn restartable_bus() -> Restartable {
    let path = fresh_path();
    let bus = open(path.clone()).await;
    Restartable::new(bus, move || open(path.clone()))
}

async fn retained_bus(policy: herald::retention::RetentionPolicy) -> Retained {
    let config = SqliteConfig::new(fresh_path()).with_retention(policy);
    let store = SqliteStore::open(config).await.expect("open store");
    Retained::new(Bus::new(store.clone()), move || {
        let store = store.clone();
        async move { store.apply_retention().await }
    })
}

/// A bus whose store refuses dead letters while a trigger on its
/// `dead_letters` table says so.
async fn breakable_bus() -> BreakableDeadLetters {
    let path = fresh_path();
    let bus = open(path.clone()).await;
    let url = format!("sqlite://{}", path.display());
    BreakableDeadLetters::new(bus, move |broken| set_broken(url.clone(), broken))
}

/// Add or drop the trigger that refuses dead letters in the store at
/// `url`, over a connection of the test's own.
async fn set_broken(url: String, broken: bool) {
    let mut conn = SqliteConnection::connect(&url).await.expect("connect");
    sqlx::query("PRAGMA busy_timeout = 10000")
        .execute(&mut conn)
        .await
        .expect("busy timeout");
    let sql = if broken {
        "CREATE TRIGGER conformance_broken BEFORE INSERT ON dead_letters \
         BEGIN SELECT RAISE(ABORT, 'dead letters broken by the conformance suite'); END"
    } else {
        "DROP TRIGGER conformance_broken"
    };
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
}

herald_conformance::conformance_tests!(
    fresh_bus,
    configured = with_delivery,
    restart = restartable_bus,
    retention = retained_bus,
    dead_letter_faults = breakable_bus,
);

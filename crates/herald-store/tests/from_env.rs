//! One service, four stores, chosen by `HERALD_STORE` alone: the same code
//! publishes, runs a keyed consumer group and calls a command on memory,
//! SQLite, PostgreSQL and NATS, and on the durable stores a restarted
//! service finds its events and its group's offset where it left them.
//!
//! Environment variables are process-wide, so this file holds one test that
//! sets them between runs, each on a runtime of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, Payload, StartPosition};
use herald_store::Store;

/// The service: the same whichever store it runs on.
async fn service(first_run: bool) -> (&'static str, Vec<(String, u64)>) {
    let store = Store::from_env().await.expect("open the configured store");
    let kind = store.kind();
    let bus = Bus::new(store.transport());
    let _double = bus
        .handle_command("math.double", |req| async move {
            Payload::json(&(req.decode::<u64>()? * 2))
        })
        .unwrap();
    let mut sub = bus
        .subscribe_raw("orders.>")
        .group("billing")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let published = if first_run { 0..3u64 } else { 3..5 };
    for n in published {
        bus.publish(
            Message::json("orders.placed", &n)
                .unwrap()
                .key(format!("c{}", n % 2)),
        )
        .await
        .unwrap();
    }
    let expected = if first_run { 3 } else { 2 };
    let mut seen = Vec::new();
    while seen.len() < expected {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a delivery within 20 s")
            .expect("the subscription is open")
            .expect("a delivery, not an error");
        seen.push((
            d.envelope().topic().to_string(),
            d.envelope().seq().unwrap(),
        ));
        d.ack().await.unwrap();
    }
    let response = bus
        .call(Message::json("math.double", &21u64).unwrap())
        .await
        .unwrap();
    let doubled: u64 = response.decode().unwrap();
    assert_eq!(doubled, 42, "{kind}: the command answers");
    drop(sub);
    store.close().await.unwrap();
    (kind, seen)
}

fn run(first_run: bool) -> (&'static str, Vec<(String, u64)>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(service(first_run))
}

fn set(vars: &[(&str, String)]) {
    for key in [
        "HERALD_STORE",
        "HERALD_PG_SCHEMA",
        "HERALD_NATS_PREFIX",
        "HERALD_NATS_STORAGE",
    ] {
        std::env::remove_var(key);
    }
    for (key, value) in vars {
        std::env::set_var(key, value);
    }
}

fn seqs(run: &[(String, u64)]) -> Vec<u64> {
    let mut s: Vec<u64> = run.iter().map(|(_, seq)| *seq).collect();
    s.sort_unstable();
    s
}

#[test]
fn herald_store_alone_moves_a_service_between_stores() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unique = format!("{now}_{:08x}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let pg = std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nats = std::env::var("HERALD_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());

    set(&[("HERALD_STORE", "memory://".to_owned())]);
    let (kind, seen) = run(true);
    assert_eq!(kind, "memory");
    assert_eq!(seqs(&seen), [1, 2, 3]);

    let durable = [
        (
            "sqlite",
            vec![(
                "HERALD_STORE",
                format!("sqlite://{}", dir.path().join("app.db").display()),
            )],
        ),
        // `ht_<unix time>_…` so the PostgreSQL tests' sweep drops it later.
        (
            "postgres",
            vec![
                ("HERALD_STORE", pg),
                ("HERALD_PG_SCHEMA", format!("ht_{unique}")),
            ],
        ),
        (
            "nats",
            vec![
                ("HERALD_STORE", nats),
                ("HERALD_NATS_PREFIX", format!("herald-test.store{unique}")),
                ("HERALD_NATS_STORAGE", "memory".to_owned()),
            ],
        ),
    ];
    for (name, vars) in durable {
        set(&vars);
        let (kind, first) = run(true);
        assert_eq!(kind, name);
        assert_eq!(seqs(&first), [1, 2, 3], "{name}: seq from 1, gap-free");
        let (_, second) = run(false);
        assert_eq!(
            seqs(&second),
            [4, 5],
            "{name}: a restarted service keeps its events and its group's offset"
        );
    }
}

#[tokio::test]
async fn a_store_url_it_cannot_open_names_the_key() {
    for url in ["redis://127.0.0.1:6379", "herald.db", ""] {
        let e = Store::open(url).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation, "{url}");
        assert!(e.to_string().contains("HERALD_STORE"), "{url}: {e}");
    }
    let e = Store::open("sqlite://").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Validation);
    let e = Store::open("kafka://127.0.0.1:1").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "no broker there: {e}");
    let e = Store::open("kafka://").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Validation, "no servers: {e}");
}

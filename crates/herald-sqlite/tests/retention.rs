//! Retention by count and age, per topic; subscribers behind it skip ahead
//! to the oldest kept event (the documented jump), never an error.

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload, StartPosition, Topic};
use herald_sqlite::{Retention, SqliteConfig, SqliteStore};

fn job(topic: &'static str, n: u64) -> Message {
    Message::new(topic, Payload::json(&n).unwrap())
}

async fn seqs(store: &SqliteStore, topic: &str) -> Vec<u64> {
    store
        .replay(topic, StartPosition::Earliest, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_retention_keeps_the_newest_and_a_group_behind_it_jumps() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("r.db"))
        .retention(Retention::default().max_events(5))
        .retention_for("audit.>", Retention::FOREVER)
        .unwrap();
    let store = SqliteStore::open(config).await.unwrap();
    let bus = Bus::new(store.clone());
    let mut group = bus
        .subscribe_raw("jobs")
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    bus.publish((0..10).map(|n| job("jobs", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    bus.publish((0..10).map(|n| job("audit.log", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    for expected in [1, 2] {
        let d = group.next().await.unwrap().unwrap();
        assert_eq!(d.seq(), Some(expected));
        d.ack().await.unwrap();
    }

    assert_eq!(store.apply_retention().await.unwrap(), 5);
    assert_eq!(seqs(&store, "jobs").await, [6, 7, 8, 9, 10]);
    assert_eq!(
        seqs(&store, "audit.log").await.len(),
        10,
        "a topic's own retention wins"
    );
    assert_eq!(
        store.last_seq(&Topic::new("jobs").unwrap()).await.unwrap(),
        Some(10)
    );

    let d = tokio::time::timeout(Duration::from_secs(10), group.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        d.seq(),
        Some(6),
        "the group continues with the oldest kept event"
    );
    d.ack().await.unwrap();
    assert_eq!(
        bus.publish(job("jobs", 10)).await.unwrap(),
        [11],
        "seq goes on"
    );
    let late = store
        .replay("jobs", StartPosition::Seq(2), 10)
        .await
        .unwrap();
    assert_eq!(
        late[0].seq(),
        Some(6),
        "a replay from a deleted seq starts at the oldest kept"
    );
    assert_eq!(store.apply_retention().await.unwrap(), 1);
}

#[tokio::test]
async fn age_retention_deletes_what_is_older() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("r.db"))
        .retention(Retention::default().max_age(Duration::from_secs(1)));
    let store = SqliteStore::open(config).await.unwrap();
    let bus = Bus::new(store.clone());
    let old = herald::Publish::into_envelope(job("t", 1), &std::sync::Arc::from("test")).unwrap();
    // An envelope created two seconds ago (ids carry their creation time).
    let mut json: serde_json::Value = serde_json::from_slice(&old.to_json().unwrap()).unwrap();
    let then = chrono::Utc::now() - chrono::Duration::seconds(2);
    let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        then.timestamp() as u64,
        then.timestamp_subsec_nanos(),
    ));
    json["id"] = id.to_string().into();
    json["time"] = then
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    let old = herald::Envelope::from_json(json.to_string().as_bytes()).unwrap();
    bus.publish(old).await.unwrap();
    bus.publish(job("t", 2)).await.unwrap();
    assert_eq!(store.apply_retention().await.unwrap(), 1);
    assert_eq!(seqs(&store, "t").await, [2]);
}

#[test]
fn retention_settings_are_range_checked() {
    let err = SqliteConfig::new("x.db")
        .retention(Retention::default().max_events(0))
        .validate()
        .unwrap_err();
    assert!(err.message().contains("HERALD_RETENTION_MAX_EVENTS"));
    let err = SqliteConfig::new("x.db")
        .retention(Retention::default().max_age(Duration::from_millis(10)))
        .validate()
        .unwrap_err();
    assert!(err.message().contains("HERALD_RETENTION_MAX_AGE"));
    assert!(SqliteConfig::new("x.db")
        .retention_for("Bad", Retention::FOREVER)
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("r.db"))
        .retention(Retention::default().max_events(2))
        .retention_interval(Duration::from_millis(50));
    let store = SqliteStore::open(config).await.unwrap();
    let bus = Bus::new(store.clone());
    bus.publish((0..10).map(|n| job("bg", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seqs(&store, "bg").await != [9, 10] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background pass never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

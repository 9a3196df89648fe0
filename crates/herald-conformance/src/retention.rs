//! Retention (a store's per-topic bounds by count and age): readers behind
//! it skip ahead to the oldest kept event (the documented jump), never an
//! error; `seq` goes on.

use std::time::Duration;

use herald::retention::{Retention, RetentionPolicy};
use herald::{Bus, Message, Payload, StartPosition};

use crate::support::{recv, seq};
use crate::Harness;

fn job(topic: &'static str, n: u64) -> Message {
    Message::new(topic, Payload::json(&n).unwrap())
}

/// The `seq`s `topic` still keeps, read by a subscription from `from`.
async fn kept(bus: &Bus, topic: &str, from: StartPosition) -> Vec<u64> {
    let last = bus.last_seq(topic).await.unwrap().expect("events");
    let mut sub = bus
        .subscribe_raw(topic)
        .ephemeral()
        .start(from)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let d = recv(&mut sub).await;
        seqs.push(seq(&d));
        d.ack().await.unwrap();
    }
    seqs
}

fn policy(default: Retention) -> RetentionPolicy {
    let mut p = RetentionPolicy::default();
    p.set_default(default);
    p
}

/// Keep the newest 5 events of every topic but `audit.>` (kept forever): a
/// group behind retention continues with the oldest kept event, `seq` goes
/// on, and a subscription from a deleted `seq` starts at the oldest kept.
pub async fn count_retention_keeps_the_newest_and_a_group_behind_it_jumps(h: &Harness) {
    let name = "count_retention_keeps_the_newest_and_a_group_behind_it_jumps";
    let mut p = policy(Retention::default().max_events(5));
    p.set_topic("conf.audit.>", Retention::FOREVER).unwrap();
    let Some(store) = h.retained(name, p).await else {
        return;
    };
    let bus = &store.bus;
    let mut group = bus
        .subscribe_raw("conf.ret.jobs")
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    bus.publish((0..10).map(|n| job("conf.ret.jobs", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    bus.publish(
        (0..10)
            .map(|n| job("conf.audit.log", n))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    for expected in [1, 2] {
        let d = recv(&mut group).await;
        assert_eq!(d.seq(), Some(expected));
        d.ack().await.unwrap();
    }

    assert_eq!(store.prune().await.unwrap(), 5);
    let from_start = StartPosition::Earliest;
    assert_eq!(
        kept(bus, "conf.ret.jobs", from_start).await,
        [6, 7, 8, 9, 10]
    );
    assert_eq!(
        kept(bus, "conf.audit.log", StartPosition::Earliest)
            .await
            .len(),
        10,
        "a topic's own retention wins"
    );
    assert_eq!(bus.last_seq("conf.ret.jobs").await.unwrap(), Some(10));

    let d = recv(&mut group).await;
    assert_eq!(
        d.seq(),
        Some(6),
        "the group continues with the oldest kept event"
    );
    d.ack().await.unwrap();
    assert_eq!(
        bus.publish(job("conf.ret.jobs", 10)).await.unwrap(),
        [11],
        "seq goes on"
    );
    assert_eq!(
        kept(bus, "conf.ret.jobs", StartPosition::Seq(2)).await[0],
        6,
        "a subscription from a deleted seq starts at the oldest kept"
    );
    assert_eq!(store.prune().await.unwrap(), 1);
}

/// Keep one second: an event created two seconds ago goes, a new one stays.
pub async fn age_retention_deletes_what_is_older(h: &Harness) {
    let name = "age_retention_deletes_what_is_older";
    let p = policy(Retention::default().max_age(Duration::from_secs(1)));
    let Some(store) = h.retained(name, p).await else {
        return;
    };
    let old = herald::Publish::into_envelope(job("conf.ret.age", 1), &std::sync::Arc::from("test"))
        .unwrap();
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
    store.bus.publish(old).await.unwrap();
    store.bus.publish(job("conf.ret.age", 2)).await.unwrap();
    assert_eq!(store.prune().await.unwrap(), 1);
    assert_eq!(
        kept(&store.bus, "conf.ret.age", StartPosition::Earliest).await,
        [2]
    );
}

/// With an interval, the store runs retention by itself.
pub async fn retention_runs_in_the_background(h: &Harness) {
    let name = "retention_runs_in_the_background";
    let mut p = policy(Retention::default().max_events(2));
    p.set_interval(Duration::from_millis(50));
    let Some(store) = h.retained(name, p).await else {
        return;
    };
    let bus = &store.bus;
    bus.publish((0..10).map(|n| job("conf.ret.bg", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while kept(bus, "conf.ret.bg", StartPosition::Earliest).await != [9, 10] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background pass never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Retention is the topic streams' own `max_msgs` and `max_age`, set from
//! the config when a stream is made and updated when a process opens it with
//! another policy: readers behind it start at the oldest kept event (the
//! documented jump), `seq` goes on, and a topic's own rule wins.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload, StartPosition, Subscription};
use herald_nats::{NatsConfig, NatsStore, Retention};

fn job(topic: &'static str, n: u64) -> Message {
    Message::new(topic, Payload::json(&n).unwrap())
}

async fn open(config: NatsConfig) -> Bus {
    Bus::new(NatsStore::open(config).await.expect("open"))
}

async fn next_seq(sub: &mut Subscription) -> u64 {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("open")
        .expect("a delivery");
    let seq = d.seq().unwrap();
    d.ack().await.unwrap();
    seq
}

/// The `seq`s `topic` keeps, read from `from` up to its last.
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
        seqs.push(next_seq(&mut sub).await);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_bound_keeps_the_newest_and_readers_behind_it_jump() {
    // One partition: the group below reads the topic in `seq` order.
    let config = support::fresh_config()
        .partitions(1)
        .retention(Retention::default().max_events(5))
        .retention_for("audit.>", Retention::FOREVER)
        .unwrap();
    let bus = open(config.clone()).await;
    bus.publish((0..10).map(|n| job("ret.jobs", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    bus.publish((0..10).map(|n| job("audit.log", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(
        kept(&bus, "ret.jobs", StartPosition::Earliest).await,
        [6, 7, 8, 9, 10]
    );
    assert_eq!(
        kept(&bus, "audit.log", StartPosition::Earliest).await.len(),
        10,
        "a topic's own rule wins"
    );
    assert_eq!(
        kept(&bus, "ret.jobs", StartPosition::Seq(2)).await[0],
        6,
        "a subscription from a deleted seq starts at the oldest kept"
    );
    let mut group = bus
        .subscribe_raw("ret.jobs")
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    assert_eq!(
        next_seq(&mut group).await,
        6,
        "a new group starts at the oldest kept"
    );
    assert_eq!(
        bus.publish(job("ret.jobs", 10)).await.unwrap(),
        [11],
        "seq goes on"
    );
    drop(group);
    bus.close().await.unwrap();

    // A process with a tighter policy updates the stream.
    let bus = open(config.retention(Retention::default().max_events(3))).await;
    assert_eq!(bus.publish(job("ret.jobs", 11)).await.unwrap(), [12]);
    assert_eq!(
        kept(&bus, "ret.jobs", StartPosition::Earliest).await,
        [10, 11, 12]
    );
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_bound_deletes_what_the_server_has_held_longer() {
    let config =
        support::fresh_config().retention(Retention::default().max_age(Duration::from_secs(1)));
    let bus = open(config).await;
    bus.publish(job("ret.age", 1)).await.unwrap();
    // The server expires by its own clock: publish every 200 ms until the
    // first event has gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        bus.publish(job("ret.age", 2)).await.unwrap();
        let seqs = kept(&bus, "ret.age", StartPosition::Earliest).await;
        if seqs[0] > 1 {
            assert!(
                seqs.len() <= 7,
                "events held over a second were kept: {seqs:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing expired in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bus.close().await.unwrap();
}

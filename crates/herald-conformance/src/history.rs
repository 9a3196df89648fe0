//! Retention, start positions and replay (DESIGN.md §4.5, §4.11).

use herald::StartPosition;

use crate::support::{number, numbered, numbers, recv, seqs};
use crate::Harness;

/// Events published before a subscription opened are delivered from
/// `Earliest`, followed by live ones; `Latest` sees only live ones.
pub async fn events_published_before_subscribe_are_retained(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(&bus, "retention", |f| f.retains_history, "retains_history") {
        return;
    }
    let batch: Vec<_> = (1..=10).map(|i| numbered("conf.retained", i)).collect();
    bus.publish(batch).await.unwrap();
    let mut early = bus
        .subscribe_raw("conf.retained")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let mut late = bus
        .subscribe_raw("conf.retained")
        .ephemeral()
        .start(StartPosition::Latest)
        .await
        .unwrap();
    bus.publish(numbered("conf.retained", 11)).await.unwrap();
    let got: Vec<u64> = seqs(&mut early, 11).await;
    assert_eq!(got, (1..=11).collect::<Vec<_>>());
    let d = recv(&mut late).await;
    assert_eq!(number(&d), 11, "`Latest` starts after what was there");
    d.ack().await.unwrap();
}

/// `Seq(n)` starts at `n`; `Time(t)` at the first event created at or after `t`.
pub async fn start_at_seq_and_time(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(
        &bus,
        "start positions",
        |f| f.retains_history,
        "retains_history",
    ) {
        return;
    }
    let first: Vec<_> = (1..=5).map(|i| numbered("conf.start", i)).collect();
    bus.publish(first).await.unwrap();
    // Times compare at the millisecond resolution of UUID v7: cut at the
    // next whole millisecond and publish only once it has passed.
    let cut = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis() + 1)
        .expect("in range");
    while chrono::Utc::now() < cut {
        tokio::task::yield_now().await;
    }
    let second: Vec<_> = (6..=8).map(|i| numbered("conf.start", i)).collect();
    bus.publish(second).await.unwrap();

    let mut from_seq = bus
        .subscribe_raw("conf.start")
        .ephemeral()
        .start(StartPosition::Seq(4))
        .await
        .unwrap();
    let got: Vec<u64> = seqs(&mut from_seq, 5).await;
    assert_eq!(got, [4, 5, 6, 7, 8]);

    let mut from_time = bus
        .subscribe_raw("conf.start")
        .ephemeral()
        .start(StartPosition::Time(cut))
        .await
        .unwrap();
    let got: Vec<u64> = numbers(&mut from_time, 3).await;
    assert_eq!(got, [6, 7, 8]);
}

/// Reading a topic from the start leaves a group's progress alone.
pub async fn replay_does_not_disturb_a_group(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(&bus, "replay", |f| f.retains_history, "retains_history") {
        return;
    }
    let mut group = bus.subscribe_raw("conf.replay").group("g").await.unwrap();
    let batch: Vec<_> = (1..=6).map(|i| numbered("conf.replay", i)).collect();
    bus.publish(batch).await.unwrap();
    let got: Vec<u64> = seqs(&mut group, 3).await;
    assert_eq!(got, [1, 2, 3]);

    let mut replay = bus
        .subscribe_raw("conf.replay")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let replayed: Vec<u64> = seqs(&mut replay, 6).await;
    assert_eq!(replayed, [1, 2, 3, 4, 5, 6]);
    drop(replay);

    let rest: Vec<u64> = seqs(&mut group, 3).await;
    assert_eq!(rest, [4, 5, 6], "the group continues where it was");
}

//! Tests of the in-memory transport's own settings; the DESIGN.md §4
//! behaviour is tested once, in the conformance suite (`tests/conformance.rs`).

use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::{Bus, Message, Payload};

fn bus(config: MemoryConfig) -> Bus {
    Bus::new(MemoryTransport::new(config).unwrap())
}

fn msg(topic: &'static str) -> Message {
    Message::new(topic, Payload::null())
}

#[tokio::test]
async fn a_full_queue_fails_with_backpressure_after_the_timeout_appending_nothing() {
    let bus = bus(MemoryConfig::default().publish_timeout(Duration::from_millis(30)));
    let _idle = bus.subscribe_raw("t").buffer(1).await.unwrap();
    bus.publish(msg("t")).await.unwrap();
    let err = bus.publish(msg("t")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backpressure);
    assert!(err.retryable());
    assert_eq!(bus.last_seq("t").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_batch_larger_than_a_buffer_is_refused_at_once() {
    let bus = bus(MemoryConfig::default());
    let _idle = bus.subscribe_raw("t").buffer(2).await.unwrap();
    let err = bus
        .publish([msg("t"), msg("t"), msg("t")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backpressure);
    assert_eq!(bus.last_seq("t").await.unwrap(), None);
}

#[tokio::test]
async fn dropping_a_subscription_unblocks_a_waiting_publisher() {
    let bus = bus(MemoryConfig::default());
    let sub = bus.subscribe_raw("t").buffer(1).await.unwrap();
    bus.publish(msg("t")).await.unwrap();
    let waiting = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish(msg("t")).await }
    });
    tokio::task::yield_now().await;
    drop(sub);
    assert_eq!(waiting.await.unwrap().unwrap(), [2]);
}

#[tokio::test]
async fn history_keeps_only_the_newest_events() {
    let bus = bus(MemoryConfig::default().history_size(3));
    let batch: Vec<Message> = (0..10).map(|_| msg("t")).collect();
    bus.publish(batch).await.unwrap();
    let mut sub = bus
        .subscribe_raw("t")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let d = sub.next().await.unwrap().unwrap();
        seqs.push(d.seq().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(seqs, [8, 9, 10]);
}

// Issue 22 item 18: a start past the history began at its oldest event
// without a word; it now counts what it skipped.
#[tokio::test]
async fn a_start_before_the_history_counts_the_events_it_skipped() {
    let bus = bus(MemoryConfig::default().history_size(3));
    let batch: Vec<Message> = (0..10).map(|_| msg("t")).collect();
    bus.publish(batch).await.unwrap();
    let skipped = || {
        bus.metrics()
            .counters()
            .into_iter()
            .find(|c| c.name() == START_SKIPPED)
            .map(|c| (c.labels().to_vec(), c.get()))
    };
    let kept = |start| bus.subscribe_raw("t").start(start);
    let _latest = kept(StartPosition::Latest).await.unwrap();
    let _within = kept(StartPosition::Seq(8)).await.unwrap();
    assert_eq!(skipped(), None);
    let mut earliest = kept(StartPosition::Earliest).await.unwrap();
    assert_eq!(earliest.next().await.unwrap().unwrap().seq(), Some(8));
    let by_topic = vec![("topic".to_owned(), "t".to_owned())];
    assert_eq!(skipped(), Some((by_topic.clone(), 7)));
    let _from_five = kept(StartPosition::Seq(5)).await.unwrap();
    assert_eq!(skipped(), Some((by_topic, 10)));
}

#[tokio::test]
async fn a_zero_dedupe_window_turns_dedupe_off() {
    let bus = bus(MemoryConfig::default().dedupe_window(Duration::ZERO));
    let a = bus.publish(msg("t").idempotency_key("k")).await.unwrap();
    let b = bus.publish(msg("t").idempotency_key("k")).await.unwrap();
    assert_eq!((a[0], b[0]), (1, 2));
}

#[tokio::test]
async fn dedupe_forgets_keys_past_its_capacity() {
    let bus = bus(MemoryConfig::default().dedupe_capacity(2));
    for k in ["a", "b", "c"] {
        bus.publish(msg("t").idempotency_key(k)).await.unwrap();
    }
    assert_eq!(
        bus.publish(msg("t").idempotency_key("c")).await.unwrap(),
        [3]
    );
    assert_eq!(
        bus.publish(msg("t").idempotency_key("a")).await.unwrap(),
        [4],
        "`a` was forgotten"
    );
}

#[tokio::test]
async fn dead_letters_past_capacity_drop_the_oldest_and_count_it() {
    let transport = MemoryTransport::new(MemoryConfig::default().dead_letter_capacity(2)).unwrap();
    let shared = transport.shared.clone();
    let bus = Bus::new(transport);
    let mut sub = bus.subscribe_raw("t").await.unwrap();
    bus.publish([msg("t"), msg("t"), msg("t")]).await.unwrap();
    for _ in 0..3 {
        let d = sub.next().await.unwrap().unwrap();
        d.term(ErrorCode::Validation, "bad").await.unwrap();
    }
    let dead = bus.dead_letters().await.unwrap();
    let seqs: Vec<_> = dead.iter().map(|d| d.envelope.seq().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(MemoryTransport { shared }.dead_letters_dropped(), 1);
}

#[tokio::test]
async fn members_of_a_group_must_follow_the_same_patterns() {
    let bus = bus(MemoryConfig::default());
    let _a = bus.subscribe_raw("t.>").group("g").await.unwrap();
    let err = bus.subscribe_raw("u.>").group("g").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
}

#[tokio::test]
async fn a_group_whose_last_member_left_starts_afresh() {
    let bus = bus(MemoryConfig::default());
    let sub = bus.subscribe_raw("t").group("g").await.unwrap();
    bus.publish(msg("t")).await.unwrap();
    drop(sub);
    bus.publish(msg("t")).await.unwrap();
    let mut again = bus.subscribe_raw("t").group("g").await.unwrap();
    bus.publish(msg("t")).await.unwrap();
    assert_eq!(again.next().await.unwrap().unwrap().seq(), Some(3));
}

#[test]
fn every_setting_is_range_checked_by_name() {
    for (config, key) in [
        (
            MemoryConfig::default().history_size(2_000_000),
            "HERALD_HISTORY_SIZE",
        ),
        (
            MemoryConfig::default().publish_timeout(Duration::ZERO),
            "HERALD_TIMEOUT_SECONDS",
        ),
        (
            MemoryConfig::default().delivery(DeliveryConfig::default().max_deliver(0)),
            "HERALD_MAX_DELIVER",
        ),
        (
            MemoryConfig::default().dead_letter_capacity(0),
            "dead_letter_capacity",
        ),
    ] {
        let err = MemoryTransport::new(config).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation);
        assert!(err.message().contains(key), "{}", err.message());
    }
}

#[tokio::test]
async fn sequence_overflow_is_an_error_not_a_wrap() {
    let transport = MemoryTransport::new(MemoryConfig::default()).unwrap();
    let topic = Topic::new("t").unwrap();
    transport.shared.topic(&topic).inner.lock().last_seq = u64::MAX - 1;
    let bus = Bus::new(transport);
    assert_eq!(bus.publish(msg("t")).await.unwrap(), [u64::MAX]);
    let err = bus.publish(msg("t")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert_eq!(bus.last_seq("t").await.unwrap(), Some(u64::MAX));
    assert_eq!(
        bus.publish(msg("u")).await.unwrap(),
        [1],
        "other topics go on"
    );
}

#[tokio::test]
async fn ack_wait_out_of_range_is_refused() {
    let bus = bus(MemoryConfig::default());
    for wait in [Duration::from_millis(9), Duration::from_secs(3601)] {
        let err = bus.subscribe_raw("t").ack_wait(wait).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation);
        assert!(err.message().contains("ack_wait"), "{}", err.message());
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivery_held_past_max_deliver_ack_waits_is_dead_lettered() {
    let delivery = DeliveryConfig::default().max_deliver(2);
    let bus = bus(MemoryConfig::default().delivery(delivery));
    let mut sub = bus
        .subscribe_raw("t")
        .ack_wait(Duration::from_secs(1))
        .await
        .unwrap();
    bus.publish(msg("t")).await.unwrap();
    let first = sub.next().await.unwrap().unwrap();
    let second = sub.next().await.unwrap().unwrap();
    assert_eq!((first.attempt(), second.attempt()), (1, 2));
    // The clock is paused: this sleep only lets the second ack wait pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    bus.publish(msg("t")).await.unwrap();
    let next = sub.next().await.unwrap().unwrap();
    assert_eq!(next.seq(), Some(2), "seq 1 is not delivered a third time");
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].reason.contains("ack wait"), "{}", dead[0].reason);
    drop((first, second));
}

#[tokio::test(start_paused = true)]
async fn a_deferred_delivery_gets_a_fresh_ack_wait() {
    let bus = bus(MemoryConfig::default());
    let mut sub = bus
        .subscribe_raw("t")
        .group("g")
        .ack_wait(Duration::from_secs(10))
        .await
        .unwrap();
    bus.publish([msg("t").key("a"), msg("t").key("b")])
        .await
        .unwrap();
    let a = sub.next().await.unwrap().unwrap();
    let b = sub.next().await.unwrap().unwrap();
    b.defer(Duration::from_secs(1)).await.unwrap();
    let b = sub.next().await.unwrap().unwrap();
    assert_eq!(b.attempt(), 1, "a deferral is not an attempt");
    a.ack().await.unwrap();
    // Paused clock, now at 1 s: go past the first delivery's deadline
    // (10 s), not the second's (11 s).
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    let state = bus.delivery_state("t", 2, "g").await.unwrap();
    assert_eq!(state, crate::DeliveryState::InFlight { attempt: 1 });
    b.ack().await.unwrap();
    assert_eq!(
        bus.delivery_state("t", 2, "g").await.unwrap(),
        crate::DeliveryState::Acked
    );
}

#[tokio::test]
async fn unnamed_subscriptions_stay_ephemeral_in_memory() {
    let bus = Bus::memory();
    let mut a = bus.subscribe_raw("fan").await.unwrap();
    let mut b = bus.subscribe_raw("fan").await.unwrap();
    bus.publish(Message::new("fan", Payload::null()))
        .await
        .unwrap();
    assert_eq!(a.next().await.unwrap().unwrap().seq(), Some(1));
    assert_eq!(b.next().await.unwrap().unwrap().seq(), Some(1), "fan-out");
    assert!(bus.consumer_health().is_empty(), "no default group");
    let both = bus.subscribe_raw("fan").group("g").ephemeral().await;
    assert_eq!(both.unwrap_err().code(), ErrorCode::Validation);
}

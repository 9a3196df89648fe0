//! At least once and dead letters (DESIGN.md §4.6, §4.12).

use std::time::{Duration, Instant};

use herald::{ErrorCode, FailureSource};

use crate::support::{number, numbered, recv};
use crate::Harness;

/// A nacked event comes back with `attempt` + 1, ahead of later events of
/// its key, and once acked it does not come back.
pub async fn nack_redelivers_with_attempt_incremented(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.nack").group("g").await.unwrap();
    bus.publish([
        numbered("conf.nack", 1).key("k"),
        numbered("conf.nack", 2).key("k"),
    ])
    .await
    .unwrap();
    let d = recv(&mut sub).await;
    assert_eq!((number(&d), d.attempt()), (1, 1));
    d.nack().await.unwrap();
    let again = recv(&mut sub).await;
    assert_eq!(
        (number(&again), again.attempt()),
        (1, 2),
        "redelivered first, attempt 2"
    );
    assert_eq!(again.seq(), Some(1), "seq is kept");
    again.ack().await.unwrap();
    let next = recv(&mut sub).await;
    assert_eq!((number(&next), next.attempt()), (2, 1));
    next.ack().await.unwrap();
    bus.publish(numbered("conf.nack", 3)).await.unwrap();
    assert_eq!(number(&recv(&mut sub).await), 3, "nothing acked comes back");
}

/// `nack_after(d)` redelivers no sooner than `d`.
pub async fn nack_with_delay_redelivers_later(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus
        .subscribe_raw("conf.nack.delay")
        .ephemeral()
        .await
        .unwrap();
    bus.publish(numbered("conf.nack.delay", 1)).await.unwrap();
    let d = recv(&mut sub).await;
    let delay = Duration::from_millis(200);
    let nacked_at = Instant::now();
    d.nack_after(delay).await.unwrap();
    let again = recv(&mut sub).await;
    assert!(
        nacked_at.elapsed() >= delay,
        "redelivered after {:?}",
        nacked_at.elapsed()
    );
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
}

/// Dropping a delivery without settling it is a nack.
pub async fn dropped_delivery_is_redelivered(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.drop").ephemeral().await.unwrap();
    bus.publish(numbered("conf.drop", 7)).await.unwrap();
    drop(recv(&mut sub).await);
    let again = recv(&mut sub).await;
    assert_eq!((number(&again), again.attempt()), (7, 2));
    again.ack().await.unwrap();
}

/// After `max_deliver` attempts the event is dead-lettered with its failure
/// metadata and not delivered again.
pub async fn max_deliver_moves_to_dead_letters(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.poison").group("g").await.unwrap();
    bus.publish(numbered("conf.poison", 1)).await.unwrap();
    let mut attempts = 0;
    let mut first_nack = None;
    let correlation = loop {
        let d = recv(&mut sub).await;
        if number(&d) != 1 {
            panic!("unexpected event");
        }
        attempts += 1;
        assert_eq!(d.attempt(), attempts);
        let correlation = d.correlation_id();
        let before = chrono::Utc::now().timestamp_millis();
        d.nack().await.unwrap();
        first_nack.get_or_insert((before, chrono::Utc::now().timestamp_millis()));
        let dead = bus.dead_letters().await.unwrap();
        if !dead.is_empty() {
            break (correlation, dead);
        }
        assert!(attempts < 1000, "never dead-lettered");
    };
    let (correlation, dead) = correlation;
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl.envelope.topic().as_str(), "conf.poison");
    assert_eq!(dl.envelope.seq(), Some(1));
    assert_eq!(dl.envelope.correlation_id(), correlation);
    assert_eq!(dl.attempts, attempts);
    assert_eq!(dl.group.as_deref(), Some("g"));
    let (before, after) = first_nack.expect("nacked at least once");
    let first = dl.first_failed_at.timestamp_millis();
    assert!(
        before <= first && first <= after,
        "first failure at the first nack"
    );
    assert!(dl.first_failed_at <= dl.failed_at);
    assert_eq!(dl.source, FailureSource::Handler);
    assert!(!dl.reason.is_empty());
    bus.publish(numbered("conf.poison", 2)).await.unwrap();
    assert_eq!(
        number(&recv(&mut sub).await),
        2,
        "the dead letter is not delivered again"
    );
}

/// A group's own `max_deliver` wins over the store's (issue 22 item 17): a
/// group of two attempts dead-letters on its second nack while a group
/// beside it, on the store's default of five, gets the event again.
pub async fn a_group_max_deliver_overrides_the_stores(h: &Harness) {
    let bus = h.bus().await;
    let mut short = bus
        .subscribe_raw("conf.tries")
        .group("short")
        .max_deliver(2)
        .await
        .unwrap();
    let mut plain = bus
        .subscribe_raw("conf.tries")
        .group("plain")
        .await
        .unwrap();
    let err = bus
        .subscribe_raw("conf.tries")
        .group("none")
        .max_deliver(0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    bus.publish(numbered("conf.tries", 1)).await.unwrap();
    for attempt in 1..=2 {
        let d = recv(&mut short).await;
        assert_eq!((number(&d), d.attempt()), (1, attempt));
        d.nack().await.unwrap();
    }
    let dead = bus.dead_letters().group("short").await.unwrap();
    assert_eq!(dead.len(), 1, "dead-lettered at the group's second attempt");
    assert_eq!(dead[0].attempts, 2);
    for attempt in 1..=3 {
        let d = recv(&mut plain).await;
        assert_eq!((number(&d), d.attempt()), (1, attempt));
        if attempt < 3 {
            d.nack().await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    assert!(bus.dead_letters().group("plain").await.unwrap().is_empty());
    bus.publish(numbered("conf.tries", 2)).await.unwrap();
    assert_eq!(
        number(&recv(&mut short).await),
        2,
        "not delivered a third time"
    );
}

/// `term` dead-letters at once with the given code; the next event of the
/// key is released.
pub async fn term_dead_letters_at_once(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.term").group("g").await.unwrap();
    bus.publish([
        numbered("conf.term", 1).key("k"),
        numbered("conf.term", 2).key("k"),
    ])
    .await
    .unwrap();
    let d = recv(&mut sub).await;
    d.term(ErrorCode::Validation, "bad order").await.unwrap();
    let next = recv(&mut sub).await;
    assert_eq!(number(&next), 2);
    next.ack().await.unwrap();
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, ErrorCode::Validation);
    assert_eq!(dead[0].reason, "bad order");
    assert_eq!(dead[0].attempts, 1);
}

/// An event past its `expires_at` is dead-lettered as `expired`, not delivered.
pub async fn expired_events_are_dead_lettered_not_delivered(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.ttl").ephemeral().await.unwrap();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    bus.publish([
        numbered("conf.ttl", 1).expires_at(past),
        numbered("conf.ttl", 2),
    ])
    .await
    .unwrap();
    let d = recv(&mut sub).await;
    assert_eq!(number(&d), 2, "the expired event is skipped");
    d.ack().await.unwrap();
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source, FailureSource::Expired);
    assert_eq!(dead[0].envelope.seq(), Some(1));
}

/// A delivery held past its ack wait is redelivered with `attempt` + 1 (in a
/// group, to any member, the key staying locked meanwhile); acking the stale
/// delivery afterwards changes nothing and fails with `UNAVAILABLE`.
pub async fn unsettled_delivery_is_redelivered_after_ack_wait(h: &Harness) {
    let bus = h.bus().await;
    let wait = Duration::from_millis(300);
    let mut m1 = bus
        .subscribe_raw("conf.ackwait")
        .group("g")
        .ack_wait(wait)
        .await
        .unwrap();
    let mut m2 = bus
        .subscribe_raw("conf.ackwait")
        .group("g")
        .ack_wait(wait)
        .await
        .unwrap();
    bus.publish([
        numbered("conf.ackwait", 1).key("k"),
        numbered("conf.ackwait", 2).key("k"),
    ])
    .await
    .unwrap();
    // Taken before the delivery is: its ack wait starts when the member
    // takes it, which is after this and may be well before `recv` returns
    // on a loaded machine.
    let held_at = Instant::now();
    let held = recv(&mut m1).await;
    assert_eq!((number(&held), held.attempt()), (1, 1));
    let again = tokio::select! {
        d = recv(&mut m1) => d,
        d = recv(&mut m2) => d,
    };
    assert!(
        held_at.elapsed() >= wait,
        "redelivered after {:?}",
        held_at.elapsed()
    );
    assert_eq!(
        (number(&again), again.attempt()),
        (1, 2),
        "event 1 again, not event 2 of its key"
    );
    // The first delivery's ack comes after it was delivered again: it
    // changes nothing and says so, so an `Ok` ack means the group never
    // hands the event out again (PostgreSQL, SQLite and the stores on
    // herald's in-process queue answered `Ok`: found by `herald chaos`
    // with 200 ms of latency to a PostgreSQL server).
    let late = held.ack().await.expect_err("an ack after the redelivery");
    assert_eq!(late.code(), herald::ErrorCode::Unavailable, "{late}");
    again.ack().await.unwrap();
    let next = tokio::select! {
        d = recv(&mut m1) => d,
        d = recv(&mut m2) => d,
    };
    assert_eq!(
        (number(&next), next.attempt()),
        (2, 1),
        "event 1 is done; event 2 follows"
    );
    next.ack().await.unwrap();
    assert!(bus.dead_letters().await.unwrap().is_empty());
}

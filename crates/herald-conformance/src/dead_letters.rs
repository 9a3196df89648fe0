//! Dead letters (DESIGN.md §4.12): list by filter, inspect, replay, purge.

use std::time::{Duration, Instant};

use herald::config::{DeadLetters, DeliveryConfig};
use herald::dead_letter::{REPLAYS_HEADER, REPLAY_OF_HEADER};
use herald::forward::Forwarder;
use herald::instrument::DEAD_LETTERS_DISCARDED;
use herald::{Bus, Config, DeliveryState, ErrorCode, FailureSource, Message, Payload};

use crate::support::{dead_letters_until, eventually, number, numbered, recv, DELIVERY_WAIT};
use crate::Harness;

/// Dead letters are selected by topic, group and code; replaying one
/// re-publishes it (new id and seq, same payload and correlation, a header
/// naming the original) and removes it; purging removes the rest.
pub async fn dead_letters_filter_replay_and_purge(h: &Harness) {
    let bus = h.bus().await;
    let mut orders = bus
        .subscribe_raw("conf.dlq.orders")
        .group("g")
        .await
        .unwrap();
    let mut bills = bus
        .subscribe_raw("conf.dlq.bills")
        .ephemeral()
        .await
        .unwrap();
    bus.publish([
        numbered("conf.dlq.orders", 1),
        numbered("conf.dlq.orders", 2),
    ])
    .await
    .unwrap();
    bus.publish(numbered("conf.dlq.bills", 3)).await.unwrap();
    let first = recv(&mut orders).await;
    let correlation = first.correlation_id();
    let original_id = first.id();
    first
        .term(ErrorCode::Validation, "bad order")
        .await
        .unwrap();
    recv(&mut orders)
        .await
        .term(ErrorCode::Forbidden, "not allowed")
        .await
        .unwrap();
    recv(&mut bills)
        .await
        .term(ErrorCode::Validation, "bad bill")
        .await
        .unwrap();

    assert_eq!(bus.dead_letters().await.unwrap().len(), 3);
    let by_topic = bus.dead_letters().topic("conf.dlq.orders").await.unwrap();
    assert_eq!(by_topic.len(), 2);
    let by_code = bus
        .dead_letters()
        .code(ErrorCode::Validation)
        .await
        .unwrap();
    assert_eq!(by_code.len(), 2);
    let by_group = bus
        .dead_letters()
        .group("g")
        .code(ErrorCode::Validation)
        .await
        .unwrap();
    assert_eq!(by_group.len(), 1);
    let inspected = &by_group[0];
    assert_eq!(
        (inspected.reason.as_str(), inspected.envelope.seq()),
        ("bad order", Some(1))
    );
    assert_eq!(bus.dead_letters().limit(1).await.unwrap().len(), 1);
    assert!(bus.dead_letters().topic("Bad Pattern").await.is_err());

    let seqs = bus
        .dead_letters()
        .ids([inspected.id])
        .replay()
        .await
        .unwrap();
    assert_eq!(seqs, [3], "replayed as a new event on its topic");
    let again = recv(&mut orders).await;
    assert_eq!(number(&again), 1);
    assert_eq!(again.correlation_id(), correlation);
    assert_eq!(
        again.header(REPLAY_OF_HEADER),
        Some(original_id.to_string().as_str())
    );
    again.ack().await.unwrap();
    assert_eq!(
        bus.dead_letters().await.unwrap().len(),
        2,
        "the replayed one is gone"
    );

    assert_eq!(
        bus.dead_letters()
            .code(ErrorCode::Validation)
            .purge()
            .await
            .unwrap(),
        1
    );
    let left = bus.dead_letters().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].code, ErrorCode::Forbidden);
    assert_eq!(bus.dead_letters().purge().await.unwrap(), 1);
    assert!(bus.dead_letters().await.unwrap().is_empty());
}

/// A group that opts into automatic replay gets its dead letters back after
/// the delay, up to the replay limit; past it the message stays dead.
pub async fn a_group_can_opt_into_automatic_replay(h: &Harness) {
    let bus = h.bus().await;
    let after = Duration::from_millis(200);
    let mut sub = bus
        .subscribe_raw("conf.dlq.auto")
        .group("auto")
        .await
        .unwrap();
    let _replaying = bus.replay_dead_letters_after("auto", after, 1);
    bus.publish(numbered("conf.dlq.auto", 1)).await.unwrap();
    let first = recv(&mut sub).await;
    // Taken before the term: the letter's failure time is no earlier, and
    // a loaded machine may return from the term long after writing it.
    let failed = Instant::now();
    first
        .term(ErrorCode::Unavailable, "try later")
        .await
        .unwrap();
    let again = recv(&mut sub).await;
    assert!(
        failed.elapsed() >= after,
        "replayed after {:?}",
        failed.elapsed()
    );
    assert_eq!(number(&again), 1);
    assert_eq!(again.header(REPLAYS_HEADER), Some("1"));
    again
        .term(ErrorCode::Unavailable, "still failing")
        .await
        .unwrap();
    // A negative check: give the replayer several of its ticks to (wrongly)
    // act, then show the next delivery is a fresh event.
    tokio::time::sleep(after * 3).await;
    bus.publish(numbered("conf.dlq.auto", 2)).await.unwrap();
    assert_eq!(number(&recv(&mut sub).await), 2, "replayed once only");
    let dead = bus.dead_letters().group("auto").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(herald::dead_letter::replays(&dead[0].envelope), 1);
}

/// Writing the dead letter and settling the message are one step (DESIGN.md
/// §4.12): while the store cannot write dead letters, a `term` fails and the
/// message comes again, with one more attempt — to a group and to a
/// group-less subscription — and once it can, that message is dead-lettered,
/// once.
pub async fn a_dead_letter_that_cannot_be_written_leaves_the_message_to_come_again(h: &Harness) {
    let scenario = "a_dead_letter_that_cannot_be_written_leaves_the_message_to_come_again";
    let Some(store) = h.breakable_dead_letters(scenario).await else {
        return;
    };
    let bus = &store.bus;
    // A group's lease that a failed term left runs out after this.
    let ack_wait = Duration::from_secs(2);
    let mut grouped = bus
        .subscribe_raw("conf.dlfail.grouped")
        .group("g")
        .ack_wait(ack_wait)
        .await
        .unwrap();
    let mut plain = bus
        .subscribe_raw("conf.dlfail.plain")
        .ephemeral()
        .ack_wait(ack_wait)
        .await
        .unwrap();
    bus.publish([
        numbered("conf.dlfail.grouped", 1).key("k"),
        numbered("conf.dlfail.plain", 2),
    ])
    .await
    .unwrap();
    let first = [recv(&mut grouped).await, recv(&mut plain).await];
    store.break_writes().await;
    for d in first {
        let topic = d.topic().clone();
        let termed = d.term(ErrorCode::Validation, "bad order").await;
        assert!(
            termed.is_err(),
            "a term on `{topic}` whose dead letter was not written reported success"
        );
    }
    store.mend().await;
    for (sub, n) in [(&mut grouped, 1), (&mut plain, 2)] {
        let again = recv(sub).await;
        assert_eq!(number(&again), n, "the message whose dead letter failed");
        assert!(again.attempt() >= 2, "a redelivery counts an attempt");
        again
            .term(ErrorCode::Validation, "bad order")
            .await
            .expect("a term once dead letters can be written");
    }
    let dead = bus.dead_letters().await.unwrap();
    let mut numbers: Vec<u64> = dead
        .iter()
        .map(|d| {
            d.envelope.decode::<serde_json::Value>().unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2], "each message dead-lettered once: {dead:?}");
    assert!(dead
        .iter()
        .all(|d| d.reason == "bad order" && d.attempts >= 2));
}

/// A forwarder whose target refuses an event for good (over the target's
/// payload limit) dead-letters it in the source with source `forwarder`,
/// and forwards the rest.
pub async fn a_forwarder_dead_letters_what_its_target_refuses_as_the_forwarder(h: &Harness) {
    let source = h.bus().await;
    let target = Bus::builder()
        .config(Config::default().max_payload_bytes(1024))
        .build()
        .unwrap();
    let forwarding = Forwarder::new(&source, &target)
        .topics("conf.fwd.>")
        .group("conf-forward")
        .run()
        .await
        .unwrap();
    let big = Message::new("conf.fwd.orders", Payload::json(&"x".repeat(2048)).unwrap());
    source.publish(big).await.unwrap();
    source
        .publish(numbered("conf.fwd.orders", 2))
        .await
        .unwrap();
    let dead = dead_letters_until(&source, 1).await;
    eventually("the forwarded event", || async {
        (target.last_seq("conf.fwd.orders").await.unwrap() == Some(1)).then_some(())
    })
    .await;
    let report = forwarding.shutdown(DELIVERY_WAIT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].source, FailureSource::Forwarder);
    assert_eq!(dead[0].code, ErrorCode::Backpressure);
    assert_eq!(dead[0].group.as_deref(), Some("conf-forward"));
    assert_eq!(dead[0].envelope.seq(), Some(1));
    assert_eq!(report.dead_lettered, 1, "{report:?}");
}

/// With dead letters off (`HERALD_DEAD_LETTERS=off`), what a group and a
/// group-less subscription give up is settled and counted in
/// `herald_dead_letters_discarded_total`, and no dead letter is kept.
pub async fn dead_letters_off_are_settled_logged_and_counted_not_kept(h: &Harness) {
    let bus = h
        .bus_with(DeliveryConfig::default().dead_letters(DeadLetters::Off))
        .await;
    let mut grouped = bus.subscribe_raw("conf.dloff").group("g").await.unwrap();
    let mut plain = bus.subscribe_raw("conf.dloff").ephemeral().await.unwrap();
    bus.publish([
        numbered("conf.dloff", 1).key("k"),
        numbered("conf.dloff", 2).key("k"),
    ])
    .await
    .unwrap();
    for sub in [&mut grouped, &mut plain] {
        let first = recv(sub).await;
        assert_eq!(number(&first), 1);
        first.term(ErrorCode::Validation, "poison").await.unwrap();
        let next = recv(sub).await;
        assert_eq!(number(&next), 2, "the given-up event is settled");
        next.ack().await.unwrap();
    }
    let discarded = bus
        .metrics()
        .counter(DEAD_LETTERS_DISCARDED, &[("source", "handler")]);
    assert_eq!(discarded.get(), 2);
    assert!(bus.dead_letters().await.unwrap().is_empty());
    let state = bus.delivery_state("conf.dloff", 1, "g").await.unwrap();
    assert_eq!(state, DeliveryState::Acked, "a discarded event is settled");
}

//! Durability (DESIGN.md §4.5): what a durable transport keeps across a
//! restart — events and their seqs, group offsets, dead letters.

use std::time::Duration;

use herald::dedupe::Dedupe;
use herald::{ErrorCode, StartPosition};

use crate::support::{collect, number, numbered, recv, seqs};
use crate::Harness;

/// Events and seqs published before a restart are there after it, and the
/// sequence continues.
pub async fn events_and_seqs_survive_a_restart(h: &Harness) {
    let Some(r) = h.restartable("events survive a restart").await else {
        return;
    };
    let batch: Vec<_> = (1..=5).map(|i| numbered("conf.durable.log", i)).collect();
    r.bus.publish(batch).await.unwrap();
    r.bus.close().await.unwrap();
    let bus = r.reopen().await;
    assert_eq!(bus.last_seq("conf.durable.log").await.unwrap(), Some(5));
    let mut all = bus
        .subscribe_raw("conf.durable.log")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    assert_eq!(
        bus.publish(numbered("conf.durable.log", 6)).await.unwrap(),
        [6]
    );
    assert_eq!(seqs(&mut all, 6).await, [1, 2, 3, 4, 5, 6]);
}

/// A restarted group resumes after its last ack: acked events are not
/// delivered again; one delivered but not acked comes back (attempt > 1).
pub async fn a_group_resumes_after_its_last_ack(h: &Harness) {
    let Some(r) = h.restartable("a group resumes").await else {
        return;
    };
    let wait = Duration::from_millis(300);
    let mut sub = r
        .bus
        .subscribe_raw("conf.durable.jobs")
        .group("g")
        .start(StartPosition::Earliest)
        .ack_wait(wait)
        .await
        .unwrap();
    let batch: Vec<_> = (1..=8).map(|i| numbered("conf.durable.jobs", i)).collect();
    r.bus.publish(batch).await.unwrap();
    for expected in 1..=3 {
        let d = recv(&mut sub).await;
        assert_eq!(number(&d), expected);
        d.ack().await.unwrap();
    }
    let held = recv(&mut sub).await;
    assert_eq!(number(&held), 4);
    std::mem::forget(held);
    drop(sub);
    r.bus.close().await.unwrap();

    let bus = r.reopen().await;
    let mut sub = bus
        .subscribe_raw("conf.durable.jobs")
        .group("g")
        .ack_wait(wait)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = recv(&mut sub).await;
        got.push((number(&d), d.attempt() > 1));
        d.ack().await.unwrap();
    }
    got.sort_unstable();
    if !bus.features().exact_resume {
        println!("conformance: `a group resumes`: the attempt of a delivery in flight at the restart is not checked: the transport does not claim `exact_resume`");
        for g in &mut got {
            g.1 = g.0 == 4;
        }
    }
    assert_eq!(
        got,
        [(4, true), (5, false), (6, false), (7, false), (8, false)],
        "events 1-3 were acked before the restart and must not come back"
    );
}

/// Dead letters are kept across a restart.
pub async fn dead_letters_survive_a_restart(h: &Harness) {
    let Some(r) = h.restartable("dead letters survive").await else {
        return;
    };
    let mut sub = r
        .bus
        .subscribe_raw("conf.durable.dlq")
        .group("g")
        .await
        .unwrap();
    r.bus
        .publish(numbered("conf.durable.dlq", 1))
        .await
        .unwrap();
    recv(&mut sub)
        .await
        .term(ErrorCode::Validation, "kept")
        .await
        .unwrap();
    assert_eq!(r.bus.dead_letters().await.unwrap().len(), 1);
    drop(sub);
    r.bus.close().await.unwrap();
    let bus = r.reopen().await;
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].envelope.seq()),
        ("kept", Some(1))
    );
}

/// A group made before its topic has events (start `Latest`, the default)
/// and left without members receives every event published after it was
/// made, in order, when a member comes back (DESIGN.md §4.5: a group's
/// start is fixed when the group is created, not when it is opened again).
pub async fn a_group_made_on_an_empty_topic_gets_what_came_while_it_was_away(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(&bus, "a group keeps its start", |f| f.durable, "durable") {
        return;
    }
    let topic = "conf.durable.early";
    let first = bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Latest)
        .await
        .unwrap();
    first.close();
    drop(first);
    let batch: Vec<_> = (1..=20).map(|i| numbered(topic, i)).collect();
    bus.publish(batch).await.unwrap();
    let mut again = bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Latest)
        .await
        .unwrap();
    let got = collect(&mut again, 20).await;
    let expected: Vec<(u64, u64)> = (1..=20).map(|i| (i, i)).collect();
    assert_eq!(
        got, expected,
        "the group was made before these events: all of them, in order"
    );
}

/// The same across a restart: a group made on an empty topic, its bus
/// closed, events published on a new bus over the same store, the group
/// opened there receives all of them, in order.
pub async fn a_group_made_on_an_empty_topic_keeps_its_start_across_a_restart(h: &Harness) {
    let Some(r) = h
        .restartable("a group keeps its start across a restart")
        .await
    else {
        return;
    };
    let topic = "conf.durable.early.restart";
    let first = r
        .bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Latest)
        .await
        .unwrap();
    drop(first);
    r.bus.close().await.unwrap();
    let bus = r.reopen().await;
    let batch: Vec<_> = (1..=20).map(|i| numbered(topic, i)).collect();
    bus.publish(batch).await.unwrap();
    let mut again = bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Latest)
        .await
        .unwrap();
    let got = collect(&mut again, 20).await;
    let expected: Vec<(u64, u64)> = (1..=20).map(|i| (i, i)).collect();
    assert_eq!(
        got, expected,
        "the group was made before these events: all of them, in order"
    );
}

/// An ack that returned `Ok` survives a crash right after it, before the
/// member claims again: the restarted group never delivers that event
/// again, and delivers the others. The bus is dropped without `close`, so
/// nothing gets a chance to flush after the ack.
pub async fn an_awaited_ack_survives_a_crash_before_the_next_claim(h: &Harness) {
    let Some(r) = h.restartable("an awaited ack survives a crash").await else {
        return;
    };
    let topic = "conf.durable.acked";
    let wait = Duration::from_millis(300);
    let mut sub = r
        .bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Earliest)
        .ack_wait(wait)
        .max_in_flight(1)
        .await
        .unwrap();
    let batch: Vec<_> = (1..=3).map(|i| numbered(topic, i)).collect();
    r.bus.publish(batch).await.unwrap();
    let d = recv(&mut sub).await;
    assert_eq!(number(&d), 1);
    d.ack().await.unwrap();
    // The crash: the member goes (holding nothing more: `max_in_flight`
    // is 1), and the bus is dropped without closing, so nothing is flushed.
    drop(sub);
    let bus = r.crash_and_reopen().await;
    let mut sub = bus
        .subscribe_raw(topic)
        .group("g")
        .ack_wait(wait)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = recv(&mut sub).await;
        got.push(number(&d));
        d.ack().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, [2, 3], "the acked event is not delivered again");
    bus.close().await.unwrap();
}

/// A handler's dedupe kept in the store ([`Dedupe::in_store`]) remembers
/// the ids each group processed across a restart, per group, and one
/// dedupe store sees what another on the same store recorded.
pub async fn processed_ids_survive_a_restart(h: &Harness) {
    let Some(r) = h.restartable("processed ids survive").await else {
        return;
    };
    let window = Duration::from_secs(3600);
    let id = uuid::Uuid::now_v7();
    let before = Dedupe::in_store(&r.bus, window).unwrap();
    assert!(!before.store().seen("billing", id).await.unwrap());
    before.store().record("billing", id).await.unwrap();
    assert!(before.store().seen("billing", id).await.unwrap());
    drop(before);
    let bus = r.crash_and_reopen().await;
    let after = Dedupe::in_store(&bus, window).unwrap();
    assert!(
        after.store().seen("billing", id).await.unwrap(),
        "remembered across a restart"
    );
    assert!(
        !after.store().seen("shipping", id).await.unwrap(),
        "per group"
    );
    // Two dedupe stores on one store (two processes, say): what one
    // records, the other sees, even after it has looked before.
    let other = Dedupe::in_store(&bus, window).unwrap();
    let next = uuid::Uuid::now_v7();
    assert!(!other.store().seen("billing", next).await.unwrap());
    after.store().record("billing", next).await.unwrap();
    assert!(other.store().seen("billing", next).await.unwrap());
}

/// An unnamed subscription on a durable store joins its default group
/// (DESIGN.md §4.5): after a restart it resumes after its last ack; one
/// that asks to be ephemeral starts where it is told, every time.
pub async fn an_unnamed_subscription_resumes_after_a_restart(h: &Harness) {
    let Some(r) = h.restartable("unnamed subscriptions are durable").await else {
        return;
    };
    let topic = "conf.durable.unnamed";
    let mut sub = r
        .bus
        .subscribe_raw(topic)
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    r.bus
        .publish((1..=3).map(|n| numbered(topic, n)).collect::<Vec<_>>())
        .await
        .unwrap();
    for n in 1..=2 {
        let d = recv(&mut sub).await;
        assert_eq!(number(&d), n);
        d.ack().await.unwrap();
    }
    drop(sub);
    let bus = r.crash_and_reopen().await;
    let mut again = bus
        .subscribe_raw(topic)
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let d = recv(&mut again).await;
    assert_eq!(number(&d), 3, "resumes after its last ack");
    d.ack().await.unwrap();
    let mut fresh = bus
        .subscribe_raw(topic)
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    assert_eq!(
        number(&recv(&mut fresh).await),
        1,
        "an ephemeral one starts over"
    );
    let groups = bus.groups().await.unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g.name.ends_with("/conf.durable.unnamed")),
        "listed under its default name: {groups:?}"
    );
}

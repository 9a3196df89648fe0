//! Consumer groups (DESIGN.md §4.4): every group gets everything, members of
//! one group share it, and same-`key` events go to one member at a time, in
//! order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::support::{assert_gap_free, number, numbered, recv, seq, DELIVERY_WAIT};
use crate::Harness;

/// Two groups each receive every event once; the members of a group share
/// them (a member holding one event does not stop the other getting the next).
pub async fn two_groups_each_get_everything_members_share(h: &Harness) {
    const N: u64 = 200;
    let bus = h.bus().await;
    let mut a1 = bus
        .subscribe_raw("conf.groups.share")
        .group("a")
        .await
        .unwrap();
    let mut a2 = bus
        .subscribe_raw("conf.groups.share")
        .group("a")
        .await
        .unwrap();
    let mut b = bus
        .subscribe_raw("conf.groups.share")
        .group("b")
        .await
        .unwrap();

    bus.publish([
        numbered("conf.groups.share", 0),
        numbered("conf.groups.share", 1),
    ])
    .await
    .unwrap();
    let held = recv(&mut a1).await;
    let other = recv(&mut a2).await;
    assert_ne!(
        number(&held),
        number(&other),
        "the second member gets the other event"
    );
    held.ack().await.unwrap();
    other.ack().await.unwrap();

    let batch: Vec<_> = (2..N).map(|i| numbered("conf.groups.share", i)).collect();
    bus.publish(batch).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let closers = [a1.close_handle(), a2.close_handle()];
    let members: Vec<_> = [a1, a2]
        .into_iter()
        .map(|mut sub| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = futures_util::StreamExt::next(&mut sub).await {
                    tx.send(number(&d)).unwrap();
                    d.ack().await.unwrap();
                }
            })
        })
        .collect();
    let mut b_seen = Vec::new();
    for _ in 0..N {
        let d = recv(&mut b).await;
        b_seen.push(seq(&d));
        d.ack().await.unwrap();
    }
    assert_gap_free("group b", &b_seen, N);
    let mut got = HashSet::new();
    for _ in 2..N {
        let n = tokio::time::timeout(DELIVERY_WAIT, rx.recv())
            .await
            .expect("group a stalled")
            .unwrap();
        assert!(got.insert(n), "group a got event {n} twice");
    }
    assert_eq!(got, (2..N).collect::<HashSet<_>>());
    for c in closers {
        c.close();
    }
    for m in members {
        m.await.unwrap();
    }
}

/// While a member holds an event of key `k`, the next `k` event goes to
/// nobody; other keys flow past it; on ack the next `k` event is delivered.
pub async fn same_key_goes_to_one_member_at_a_time(h: &Harness) {
    let bus = h.bus().await;
    let mut m1 = bus
        .subscribe_raw("conf.groups.key")
        .group("g")
        .await
        .unwrap();
    let mut m2 = bus
        .subscribe_raw("conf.groups.key")
        .group("g")
        .await
        .unwrap();
    bus.publish([
        numbered("conf.groups.key", 1).key("k"),
        numbered("conf.groups.key", 2).key("k"),
        numbered("conf.groups.key", 3).key("other"),
    ])
    .await
    .unwrap();
    let first = recv(&mut m1).await;
    assert_eq!(number(&first), 1);
    let next = recv(&mut m2).await;
    assert_eq!(
        number(&next),
        3,
        "event 2 waits for event 1 of its key; event 3 is free"
    );
    next.ack().await.unwrap();
    first.ack().await.unwrap();
    let second = tokio::select! {
        d = recv(&mut m1) => d,
        d = recv(&mut m2) => d,
    };
    assert_eq!(
        number(&second),
        2,
        "after the ack the next event of the key is delivered"
    );
    second.ack().await.unwrap();
}

/// A member holding one event does not stall its group: the other member
/// takes the 300 events after it (more than a store reads at once).
pub async fn a_held_event_does_not_stall_the_group(h: &Harness) {
    const N: u64 = 300;
    let bus = h.bus().await;
    let topic = "conf.groups.held";
    let mut holder = bus.subscribe_raw(topic).group("g").await.unwrap();
    let mut worker = bus.subscribe_raw(topic).group("g").await.unwrap();
    bus.publish(numbered(topic, 0)).await.unwrap();
    let held = recv(&mut holder).await;
    assert_eq!(number(&held), 0);
    let batch: Vec<_> = (1..=N).map(|i| numbered(topic, i)).collect();
    bus.publish(batch).await.unwrap();
    for i in 1..=N {
        let d = recv(&mut worker).await;
        assert_eq!(number(&d), i, "the worker gets every later event, in order");
        d.ack().await.unwrap();
    }
    held.ack().await.unwrap();
}

/// Each member of a group holds at most its own `max_in_flight`
/// deliveries, claimed and not yet settled: one that never settles gets
/// that many, and another member of the same bus gets every other event.
pub async fn a_member_holds_at_most_its_max_in_flight(h: &Harness) {
    const N: u64 = 40;
    let topic = "conf.groups.in_flight";
    let bus = h.bus().await;
    let mut hoarder = bus
        .subscribe_raw(topic)
        .group("g")
        .max_in_flight(2)
        .await
        .unwrap();
    let mut worker = bus.subscribe_raw(topic).group("g").await.unwrap();
    let batch: Vec<_> = (0..N).map(|i| numbered(topic, i)).collect();
    bus.publish(batch).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let hoard_tx = tx.clone();
    let hoarding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(Ok(d)) = futures_util::StreamExt::next(&mut hoarder).await {
            hoard_tx.send((false, number(&d))).unwrap();
            held.push(d);
        }
    });
    let working = tokio::spawn(async move {
        while let Some(Ok(d)) = futures_util::StreamExt::next(&mut worker).await {
            tx.send((true, number(&d))).unwrap();
            d.ack().await.unwrap();
        }
    });
    let mut seen = HashSet::new();
    let mut worked = 0;
    while seen.len() < N as usize {
        let (by_worker, n) = tokio::time::timeout(DELIVERY_WAIT, rx.recv())
            .await
            .expect("the members stalled")
            .unwrap();
        assert!(seen.insert(n), "event {n} delivered twice");
        worked += u64::from(by_worker);
    }
    assert_eq!(worked, N - 2, "the member with room for 2 took 2");
    working.abort();
    hoarding.abort();
}

/// A member dropped without closing (its task aborted, its connection gone)
/// hands back at once everything it took: the delivery it held unsettled
/// and the events it had claimed but not yet handed out, so the next member
/// gets them instead of after their leases (an hour here) run out.
pub async fn a_dropped_member_hands_back_what_it_took(h: &Harness) {
    const N: u64 = 10;
    let topic = "conf.groups.dropped";
    let lease = std::time::Duration::from_secs(3600);
    let bus = h.bus().await;
    // A group outlives its members only on a durable transport.
    if !Harness::requires(&bus, "a dropped member", |f| f.durable, "durable") {
        return;
    }
    let mut first = bus
        .subscribe_raw(topic)
        .group("g")
        .ack_wait(lease)
        .await
        .unwrap();
    let batch: Vec<_> = (1..=N).map(|i| numbered(topic, i)).collect();
    bus.publish(batch).await.unwrap();
    let d = recv(&mut first).await;
    assert_eq!(number(&d), 1);
    d.ack().await.unwrap();
    let held = recv(&mut first).await;
    assert_eq!(number(&held), 2);
    drop(first);
    drop(held);
    let mut next = bus
        .subscribe_raw(topic)
        .group("g")
        .ack_wait(lease)
        .await
        .unwrap();
    let mut got = HashMap::new();
    for _ in 2..=N {
        let d = recv(&mut next).await;
        got.insert(number(&d), d.attempt());
        d.ack().await.unwrap();
    }
    assert_eq!(
        got.keys().copied().collect::<HashSet<_>>(),
        (2..=N).collect::<HashSet<_>>(),
        "every event taken comes back, once"
    );
    // A transport that resumes exactly also keeps the dropped delivery's
    // attempt as the group moves to another member (`Features::exact_resume`).
    if bus.features().exact_resume {
        assert!(got[&2] >= 2, "the delivery dropped counts as an attempt");
    }
}

/// A member dropped at any point of taking an event — waiting for it, in
/// the middle of the claim that leases it, or holding it — hands it back at
/// once: another member gets it long before its lease (ten minutes here)
/// would run out. Rounds drop the member at different points: after some
/// yields, and as soon as the store reports the event in flight (when the
/// claim has leased it and may not have answered yet).
pub async fn a_member_dropped_mid_claim_hands_back_its_claim(h: &Harness) {
    const ROUNDS: u64 = 12;
    let lease = std::time::Duration::from_secs(600);
    let bus = h.bus().await;
    if !Harness::requires(&bus, "a member dropped mid-claim", |f| f.durable, "durable") {
        return;
    }
    for round in 0..ROUNDS {
        let topic = format!("conf.groups.midclaim.r{round}");
        let group = format!("g{round}");
        let first = bus
            .subscribe_raw(&topic)
            .group(&group)
            .ack_wait(lease)
            .await
            .unwrap();
        let taking = tokio::spawn(async move {
            let mut first = first;
            let delivery = futures_util::StreamExt::next(&mut first).await;
            (first, delivery)
        });
        bus.publish(numbered(&topic, round)).await.unwrap();
        if round % 2 == 0 {
            for _ in 0..round {
                tokio::task::yield_now().await;
            }
        } else {
            let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
            // Until the group exists, a transport may not know it.
            while !matches!(
                bus.delivery_state(&topic, 1, &group).await,
                Ok(herald::DeliveryState::InFlight { .. })
            ) {
                assert!(tokio::time::Instant::now() < deadline, "never leased");
                tokio::task::yield_now().await;
            }
        }
        taking.abort();
        let _ = taking.await;
        let mut second = bus
            .subscribe_raw(&topic)
            .group(&group)
            .ack_wait(lease)
            .await
            .unwrap();
        let d = recv(&mut second).await;
        assert_eq!(number(&d), round, "round {round}: the event came back");
        d.ack().await.unwrap();
    }
}

/// Three members processing 1,000 events over 10 keys concurrently: per key,
/// never two in flight and always in publish order.
pub async fn per_key_order_holds_under_concurrent_members(h: &Harness) {
    const N: u64 = 1000;
    const KEYS: u64 = 10;
    let bus = h.bus().await;
    let state = Arc::new(KeyState::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut members = Vec::new();
    let mut closers = Vec::new();
    for m in 0..3u64 {
        let mut sub = bus
            .subscribe_raw("conf.groups.order")
            .group("workers")
            .await
            .unwrap();
        closers.push(sub.close_handle());
        let (state, tx) = (state.clone(), tx.clone());
        members.push(tokio::spawn(async move {
            while let Some(Ok(d)) = futures_util::StreamExt::next(&mut sub).await {
                let n = number(&d);
                let key = d.key().expect("keyed").to_string();
                state.enter(&key, n);
                for _ in 0..(n + m) % 4 {
                    tokio::task::yield_now().await;
                }
                state.leave(&key);
                d.ack().await.unwrap();
                tx.send(n).unwrap();
            }
        }));
    }
    for chunk in 0..N / 50 {
        let batch: Vec<_> = (0..50)
            .map(|i| {
                let n = chunk * 50 + i;
                numbered("conf.groups.order", n).key(format!("key{}", n % KEYS))
            })
            .collect();
        bus.publish(batch).await.unwrap();
    }
    let mut handled = HashSet::new();
    for _ in 0..N {
        let n = tokio::time::timeout(DELIVERY_WAIT, rx.recv())
            .await
            .expect("group stalled")
            .unwrap();
        assert!(handled.insert(n), "event {n} handled twice");
    }
    for c in closers {
        c.close();
    }
    for m in members {
        m.await.unwrap();
    }
    let violations = state.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "per-key violations: {violations:?}");
}

#[derive(Default)]
struct KeyState {
    inner: std::sync::Mutex<HashMap<String, (bool, u64)>>,
    violations: std::sync::Mutex<Vec<String>>,
}

impl KeyState {
    fn enter(&self, key: &str, n: u64) {
        let mut map = self.inner.lock().unwrap();
        let entry = map.entry(key.to_string()).or_insert((false, 0));
        if entry.0 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{key}: event {n} while another is in flight"));
        }
        if n < entry.1 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{key}: event {n} after {}", entry.1));
        }
        *entry = (true, n);
    }

    fn leave(&self, key: &str) {
        self.inner.lock().unwrap().get_mut(key).expect("entered").0 = false;
    }
}

/// The delivery state of an event for a group: pending, in flight with its
/// attempt, acked, dead-lettered; unknown events and groups are `NOT_FOUND`.
pub async fn delivery_state_can_be_queried(h: &Harness) {
    use herald::{DeliveryState, ErrorCode};
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.state").group("g").await.unwrap();
    bus.publish([
        numbered("conf.state", 1).key("k"),
        numbered("conf.state", 2).key("k"),
        numbered("conf.state", 3).key("k"),
    ])
    .await
    .unwrap();
    let first = recv(&mut sub).await;
    assert_eq!(
        bus.delivery_state("conf.state", 1, "g").await.unwrap(),
        DeliveryState::InFlight { attempt: 1 }
    );
    assert_eq!(
        bus.delivery_state("conf.state", 2, "g").await.unwrap(),
        DeliveryState::Pending
    );
    first.ack().await.unwrap();
    assert_eq!(
        bus.delivery_state("conf.state", 1, "g").await.unwrap(),
        DeliveryState::Acked
    );
    recv(&mut sub)
        .await
        .term(ErrorCode::Validation, "no")
        .await
        .unwrap();
    assert_eq!(
        bus.delivery_state("conf.state", 2, "g").await.unwrap(),
        DeliveryState::DeadLettered
    );
    let third = recv(&mut sub).await;
    assert_eq!(
        bus.delivery_state("conf.state", 3, "g").await.unwrap(),
        DeliveryState::InFlight { attempt: 1 }
    );
    third.ack().await.unwrap();
    for (seq, group) in [(99, "g"), (1, "nobody")] {
        let err = bus
            .delivery_state("conf.state", seq, group)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
}

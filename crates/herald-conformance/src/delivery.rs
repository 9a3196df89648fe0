//! Publish, fan-out and per-topic order (DESIGN.md §4.1–4.3, 4.13).

use std::collections::HashMap;

use herald::{Event, Kind, KindFilter, Message, Payload, Priority, StartPosition};

use crate::support::{
    assert_gap_free, collect, dead_letters_until, number, numbered, numbers, recv, seq, seqs,
    DELIVERY_WAIT,
};
use crate::Harness;

/// 1,000 events published one by one arrive once each, in `seq` order 1..=1000.
pub async fn publish_subscribe_1000(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.basic").ephemeral().await.unwrap();
    for i in 0..1000u64 {
        let seqs = bus.publish(numbered("conf.basic", i)).await.unwrap();
        assert_eq!(seqs, [i + 1], "publish returns the assigned seq");
    }
    let got = collect(&mut sub, 1000).await;
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_gap_free("subscriber", &seqs, 1000);
    assert!(
        got.iter().enumerate().all(|(i, g)| g.1 == i as u64),
        "payloads in publish order"
    );
    assert_eq!(bus.last_seq("conf.basic").await.unwrap(), Some(1000));
}

/// Single publishes and batches draw from one per-topic sequence; a batch
/// returns its seqs in order.
pub async fn single_and_batch_publish_share_one_sequence(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.mixed").ephemeral().await.unwrap();
    let mut expected = 0u64;
    for round in 0..20u64 {
        let one = bus.publish(numbered("conf.mixed", expected)).await.unwrap();
        expected += 1;
        assert_eq!(one, [expected]);
        let batch: Vec<Message> = (0..round % 7 + 1)
            .map(|k| numbered("conf.mixed", expected + k))
            .collect();
        let n = batch.len() as u64;
        let seqs = bus.publish(batch).await.unwrap();
        assert_eq!(seqs, (expected + 1..=expected + n).collect::<Vec<_>>());
        expected += n;
    }
    assert!(
        bus.publish(Vec::<Message>::new()).await.unwrap().is_empty(),
        "an empty batch is a no-op"
    );
    let got = collect(&mut sub, expected as usize).await;
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_gap_free("subscriber", &seqs, expected);
}

/// 50 concurrent subscribers each receive all 5,000 events in order.
pub async fn fan_out_50_subscribers_5000_events(h: &Harness) {
    const SUBS: usize = 50;
    const EVENTS: u64 = 5000;
    let bus = h.bus().await;
    let mut consumers = Vec::new();
    for _ in 0..SUBS {
        let mut sub = bus.subscribe_raw("conf.fanout").ephemeral().await.unwrap();
        consumers.push(tokio::spawn(async move {
            seqs(&mut sub, EVENTS as usize).await
        }));
    }
    for chunk in 0..EVENTS / 100 {
        let batch: Vec<Message> = (0..100)
            .map(|k| numbered("conf.fanout", chunk * 100 + k))
            .collect();
        bus.publish(batch).await.unwrap();
    }
    for (i, c) in consumers.into_iter().enumerate() {
        assert_gap_free(&format!("subscriber {i}"), &c.await.unwrap(), EVENTS);
    }
}

/// 20 topics published concurrently: each topic's subscriber and one
/// wildcard subscriber see every topic gap-free and in order.
pub async fn twenty_topics_concurrently(h: &Harness) {
    const TOPICS: usize = 20;
    const EACH: u64 = 500;
    let bus = h.bus().await;
    let mut wildcard = bus.subscribe_raw("conf.t20.>").ephemeral().await.unwrap();
    let mut per_topic = Vec::new();
    for t in 0..TOPICS {
        let topic = format!("conf.t20.topic{t}");
        let mut sub = bus.subscribe_raw(&topic).ephemeral().await.unwrap();
        per_topic.push(tokio::spawn(
            async move { seqs(&mut sub, EACH as usize).await },
        ));
    }
    let all = tokio::spawn(async move {
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..TOPICS as u64 * EACH {
            let d = recv(&mut wildcard).await;
            seen.entry(d.topic().to_string()).or_default().push(seq(&d));
            d.ack().await.unwrap();
        }
        seen
    });
    let publishers: Vec<_> = (0..TOPICS)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let topic = format!("conf.t20.topic{t}");
                for i in 0..EACH {
                    bus.publish(numbered(&topic, i)).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for (t, c) in per_topic.into_iter().enumerate() {
        assert_gap_free(&format!("topic {t} subscriber"), &c.await.unwrap(), EACH);
    }
    let seen = all.await.unwrap();
    assert_eq!(seen.len(), TOPICS);
    for (topic, seqs) in seen {
        assert_gap_free(&format!("wildcard subscriber on {topic}"), &seqs, EACH);
    }
}

/// Each topic has its own counter from 1, whatever the interleaving.
pub async fn ten_topics_have_independent_counters(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus
        .subscribe_raw("conf.counters.*")
        .ephemeral()
        .await
        .unwrap();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..300u64 {
        let topic = format!("conf.counters.c{}", (i * 7) % 10);
        let next = expected.entry(topic.clone()).or_default();
        *next += 1;
        assert_eq!(bus.publish(numbered(&topic, i)).await.unwrap(), [*next]);
    }
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..300 {
        let d = recv(&mut sub).await;
        seen.entry(d.topic().to_string()).or_default().push(seq(&d));
        d.ack().await.unwrap();
    }
    for (topic, n) in &expected {
        assert_gap_free(topic, &seen[topic], *n);
        assert_eq!(bus.last_seq(topic).await.unwrap(), Some(*n));
    }
    assert_eq!(bus.last_seq("conf.counters.never").await.unwrap(), None);
}

/// 10,000 publishes from 100 concurrent tasks to one topic: the returned seqs
/// are exactly 1..=10000 and every subscriber sees them with no gap or
/// inversion.
pub async fn ten_thousand_concurrent_publishes_no_gaps_or_inversions(h: &Harness) {
    const TASKS: u64 = 100;
    const EACH: u64 = 100;
    const TOTAL: u64 = TASKS * EACH;
    let bus = h.bus().await;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let mut sub = bus.subscribe_raw("conf.storm").ephemeral().await.unwrap();
        consumers.push(tokio::spawn(
            async move { seqs(&mut sub, TOTAL as usize).await },
        ));
    }
    let publishers: Vec<_> = (0..TASKS)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    let s = bus
                        .publish(numbered("conf.storm", t * EACH + i))
                        .await
                        .unwrap();
                    mine.push(s[0]);
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                mine
            })
        })
        .collect();
    let mut returned = Vec::new();
    for p in publishers {
        let mine = p.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs increase"
        );
        returned.extend(mine);
    }
    returned.sort_unstable();
    assert_gap_free("returned seqs", &returned, TOTAL);
    for (i, c) in consumers.into_iter().enumerate() {
        assert_gap_free(&format!("subscriber {i}"), &c.await.unwrap(), TOTAL);
    }
}

/// `*` matches one segment, `>` the rest; commands are not topic traffic
/// unless asked for.
pub async fn patterns_and_kinds_select_what_is_delivered(h: &Harness) {
    let bus = h.bus().await;
    let mut star = bus.subscribe_raw("conf.pat.*").ephemeral().await.unwrap();
    let mut rest = bus.subscribe_raw("conf.pat.>").ephemeral().await.unwrap();
    let mut all_kinds = bus
        .subscribe_raw("conf.pat.>")
        .ephemeral()
        .kinds(KindFilter::ALL)
        .await
        .unwrap();
    bus.publish([
        numbered("conf.pat.a", 1),
        numbered("conf.pat.a.deep", 2),
        numbered("conf.pat.a", 3).kind(Kind::Command),
        numbered("conf.pat.b", 4).kind(Kind::Intent),
        numbered("conf.other", 5),
    ])
    .await
    .unwrap();
    // Only each topic's order is promised: compare what arrived, sorted.
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    assert_eq!(
        sorted(numbers(&mut star, 2).await),
        [1, 4],
        "`*` is one segment; commands are skipped; intents delivered"
    );
    assert_eq!(sorted(numbers(&mut rest, 3).await), [1, 2, 4]);
    let mut all_seen = Vec::new();
    for _ in 0..4 {
        let d = recv(&mut all_kinds).await;
        all_seen.push((number(&d), d.kind()));
        d.ack().await.unwrap();
    }
    all_seen.sort_unstable_by_key(|(n, _)| *n);
    assert_eq!(
        all_seen,
        [
            (1, Kind::Event),
            (2, Kind::Event),
            (3, Kind::Command),
            (4, Kind::Intent)
        ],
        "every kind when asked for"
    );
    assert!(
        bus.subscribe_raw("Bad.Pattern").ephemeral().await.is_err(),
        "bad patterns are refused"
    );
    assert!(
        bus.subscribe_raw("a.>.b").ephemeral().await.is_err(),
        "`>` only at the end"
    );
}

/// A typed event enum used by the scenarios.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(prefix = "conf.account")]
pub enum AccountEvent {
    /// Opened with an owner.
    Opened {
        /// Account id.
        id: u64,
        /// Owner name.
        owner: String,
    },
    /// Money moved.
    #[event(name = "credited")]
    Deposit(u64),
    /// Closed.
    Closed,
}

/// `subscribe::<E>()` decodes every variant; filters narrow it; a payload
/// that does not fit is an error for that item, not the end of the stream.
pub async fn typed_subscriptions_decode_and_filter(h: &Harness) {
    let bus = h.bus().await;
    let mut all = bus.subscribe::<AccountEvent>().ephemeral().await.unwrap();
    let mut big = bus
        .subscribe::<AccountEvent>()
        .ephemeral()
        .filter(|e| matches!(e, AccountEvent::Deposit(n) if *n >= 100))
        .await
        .unwrap();
    let events = vec![
        AccountEvent::Opened {
            id: 1,
            owner: "ada".into(),
        },
        AccountEvent::Deposit(5),
        AccountEvent::Deposit(500),
        AccountEvent::Closed,
    ];
    bus.publish(events.clone()).await.unwrap();
    bus.publish(Message::new(
        "conf.account.credited",
        Payload::json(&"not a number").unwrap(),
    ))
    .await
    .unwrap();
    bus.publish(AccountEvent::Deposit(100)).await.unwrap();
    // Each topic keeps its order; topics may interleave.
    let mut credited = Vec::new();
    let mut others = Vec::new();
    for _ in 0..events.len() + 2 {
        let item = tokio::time::timeout(DELIVERY_WAIT, futures_util::StreamExt::next(&mut all))
            .await
            .expect("the typed subscription stalled");
        match item {
            Some(Ok(got)) => {
                assert_eq!(got.delivery().topic().as_str(), got.event().topic());
                match got.event() {
                    AccountEvent::Deposit(n) => credited.push(Some(*n)),
                    other => others.push(other.clone()),
                }
                got.ack().await.unwrap();
            }
            Some(Err(e)) => {
                assert_eq!(e.code(), herald::ErrorCode::Validation);
                credited.push(None);
            }
            None => panic!("the typed subscription ended"),
        }
    }
    assert_eq!(
        credited,
        [Some(5), Some(500), None, Some(100)],
        "an undecodable payload is a VALIDATION error for that item and the stream goes on"
    );
    assert_eq!(others.len(), 2);
    assert!(others.contains(&events[0]) && others.contains(&events[3]));
    let got = recv(&mut big).await;
    assert_eq!(*got, AccountEvent::Deposit(500));
    got.ack().await.unwrap();
    match futures_util::StreamExt::next(&mut big).await {
        Some(Err(_)) => {}
        other => panic!("expected the decode error, got {other:?}"),
    }
    assert_eq!(*recv(&mut big).await, AccountEvent::Deposit(100));
    let dead = dead_letters_until(&bus, 1).await;
    assert!(
        dead.iter()
            .all(|d| d.source == herald::FailureSource::Decode && d.envelope.seq() == Some(3)),
        "what a typed subscription cannot decode is dead-lettered as `decode`: {dead:?}"
    );
}

/// Waiting events go out highest priority first, but one topic and key keeps
/// its order whatever the priorities.
pub async fn priority_orders_waiting_events_but_never_within_a_key(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(&bus, "priority", |f| f.priority, "priority") {
        return;
    }
    let mut sub = bus
        .subscribe_raw("conf.prio.>")
        .ephemeral()
        .start(StartPosition::Latest)
        .await
        .unwrap();
    bus.publish([
        numbered("conf.prio.a", 1).key("k1").priority(Priority::Low),
        numbered("conf.prio.a", 2)
            .key("k2")
            .priority(Priority::Normal),
        numbered("conf.prio.a", 3)
            .key("k3")
            .priority(Priority::Critical),
        numbered("conf.prio.a", 4)
            .key("k4")
            .priority(Priority::High),
        numbered("conf.prio.b", 5)
            .key("same")
            .priority(Priority::Low),
        numbered("conf.prio.b", 6)
            .key("same")
            .priority(Priority::Critical),
    ])
    .await
    .unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        let d = recv(&mut sub).await;
        order.push(number(&d));
        d.ack().await.unwrap();
    }
    let pos = |n: u64| order.iter().position(|&x| x == n).unwrap();
    assert!(
        pos(3) < pos(4) && pos(4) < pos(2) && pos(2) < pos(1),
        "priority order: {order:?}"
    );
    assert!(
        pos(5) < pos(6),
        "same topic and key keep their order: {order:?}"
    );
}

/// The headers delivered are exactly those published (the producer's own,
/// and the `traceparent` the bus gives an event without one): a store adds
/// none of its own facts to them, to a subscriber, a group member or a
/// replay.
pub async fn headers_arrive_exactly_as_published(h: &Harness) {
    let bus = h.bus().await;
    let topic = "conf.headers";
    let mut plain = bus.subscribe_raw(topic).ephemeral().await.unwrap();
    let mut member = bus.subscribe_raw(topic).group("g").await.unwrap();
    let published = bus
        .prepare([
            numbered(topic, 1)
                .header("tenant", "acme")
                .header("destination", "billing"),
            numbered(topic, 2),
        ])
        .unwrap();
    let expected: Vec<_> = published.iter().map(|e| e.headers().clone()).collect();
    bus.publish(published).await.unwrap();
    for sub in [&mut plain, &mut member] {
        for want in &expected {
            let d = recv(sub).await;
            assert_eq!(d.envelope().headers(), want, "delivered headers");
            d.ack().await.unwrap();
        }
    }
    if bus.features().retains_history {
        let page = bus
            .replay(topic, StartPosition::Earliest, 10)
            .await
            .unwrap();
        let replayed: Vec<_> = page.iter().map(|e| e.headers().clone()).collect();
        assert_eq!(replayed, expected, "replayed headers");
    }
}

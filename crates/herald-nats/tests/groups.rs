//! A group whose members are in different processes (here: stores with
//! connections of their own): they share the work through the leader, keep
//! per-key order, and the group goes on when the leader's process leaves.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use std::sync::Arc;

use futures_util::StreamExt;
use herald::{
    Bus, DeliveryState, ErrorCode, Message, Pattern, Payload, StartPosition, SubscribeSpec,
    Transport,
};
use herald_nats::NatsStore;

const WAIT: Duration = Duration::from_secs(20);

fn numbered(n: u64) -> Message {
    Message::new("jobs.work", Payload::json(&n).unwrap()).key(format!("k{}", n % 5))
}

/// Two stores on one prefix, each with a connection of its own: two
/// processes of one service.
async fn two_processes() -> (Bus, Bus) {
    let config = support::fresh_config();
    let a = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let b = Bus::new(NatsStore::open(config).await.unwrap());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_two_processes_share_a_group_and_survive_the_leader_leaving() {
    let (a, b) = two_processes().await;
    let mut leader_side = a.subscribe_raw("jobs.work").group("workers").await.unwrap();
    let mut remote_side = b.subscribe_raw("jobs.work").group("workers").await.unwrap();

    a.publish((0..40).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    // The remote member holds one delivery while the state is asked from
    // its own process, which does not lead the group.
    let held = tokio::time::timeout(WAIT, remote_side.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        b.delivery_state("jobs.work", held.seq().unwrap(), "workers")
            .await
            .unwrap(),
        DeliveryState::InFlight { attempt: 1 }
    );
    let mut seen = Seen::default();
    seen.record(&held, 1);
    held.ack().await.unwrap();
    // Alternate between the members: each takes what is free.
    while seen.sides.len() < 40 {
        tokio::select! {
            d = leader_side.next() => { let d = d.unwrap().unwrap(); seen.record(&d, 0); d.ack().await.unwrap(); }
            d = remote_side.next() => { let d = d.unwrap().unwrap(); seen.record(&d, 1); d.ack().await.unwrap(); }
            _ = tokio::time::sleep(WAIT) => panic!("the group stalled at {} events", seen.sides.len()),
        }
    }
    let sides: HashSet<usize> = seen.sides.values().copied().collect();
    assert_eq!(sides.len(), 2, "both processes took work");

    // The leader's process leaves; the other takes the group over.
    leader_side.close();
    a.close().await.unwrap();
    b.publish((40..50).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut after = Vec::new();
    while after.len() < 10 {
        let d = tokio::time::timeout(WAIT, remote_side.next())
            .await
            .expect("the group goes on without its first leader")
            .unwrap()
            .unwrap();
        after.push(d.decode::<u64>().unwrap());
        d.ack().await.unwrap();
    }
    after.sort_unstable();
    assert_eq!(after, (40..50).collect::<Vec<_>>());
}

/// Another process lists a group: with its patterns before any topic has
/// events, then on its topic with a dead-lettered event settled and a
/// deferred one unsettled, also once its leader is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_lists_a_group_with_its_offset_and_lag() {
    let (a, b) = two_processes().await;
    let mut sub = a.subscribe_raw("audit.*").group("auditors").await.unwrap();
    let groups = b.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].name.as_str(), groups[0].patterns.as_slice()),
        ("auditors", ["audit.*".to_owned()].as_slice())
    );
    assert!(groups[0].topics.is_empty(), "no topic has events yet");

    a.publish((1..=3).map(|n| Message::new("audit.log", Payload::json(&n).unwrap())))
        .await
        .unwrap();
    let first = recv(&mut sub).await;
    first
        .term(ErrorCode::Validation, "unreadable")
        .await
        .unwrap();
    recv(&mut sub).await.defer(WAIT * 10).await.unwrap();
    recv(&mut sub).await.ack().await.unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let groups = b.groups().await.unwrap();
        let t = &groups[0].topics;
        let standing = t
            .iter()
            .map(|t| (t.topic.as_str(), t.acked_through, t.last_seq, t.lag));
        if standing.collect::<Vec<_>>() == [("audit.log", 1, 3, 1)] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "last: {groups:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The leader hands the deferred event back as it goes: still unsettled.
    a.close().await.unwrap();
    let t = &b.groups().await.unwrap()[0].topics[0];
    assert_eq!((t.acked_through, t.last_seq, t.lag), (1, 3, 1));
}

/// Acks awaited together are committed in groups (one confirmation per
/// group); each is applied at the server by the time it returns, so
/// another process sees the group's offset past all of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_awaited_together_are_all_applied_when_they_return() {
    let (a, b) = two_processes().await;
    let mut sub = a.subscribe_raw("audit.bulk").group("bulk").await.unwrap();
    a.publish((1..=200).map(|n| Message::new("audit.bulk", Payload::json(&n).unwrap())))
        .await
        .unwrap();
    let mut held = Vec::new();
    while held.len() < 200 {
        held.push(recv(&mut sub).await);
    }
    let acks = held.into_iter().map(|d| d.ack());
    for acked in futures_util::future::join_all(acks).await {
        acked.unwrap();
    }
    let groups = b.groups().await.unwrap();
    let t = &groups[0].topics[0];
    assert_eq!((t.acked_through, t.last_seq, t.lag), (200, 200, 0));
}

/// Closing a store while a group subscribe is still setting its leader up:
/// the subscribe fails with `UNAVAILABLE` or returns a stream that ends.
/// Asked of the store itself, below the bus (a bus gives up on such a
/// subscribe by itself; the store must not leave a leader behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscribe_in_flight_ends_with_its_store() {
    const END_WAIT: Duration = Duration::from_secs(10);
    for close_after in [0, 1, 5, 20].map(Duration::from_millis) {
        let store = Arc::new(NatsStore::open(support::fresh_config()).await.unwrap());
        let bus = Bus::new(store.clone());
        bus.publish(Message::json("close.racing", &0).unwrap())
            .await
            .unwrap();
        let mut spec = SubscribeSpec::new(vec![Pattern::new("close.racing").unwrap()]);
        spec.group = Some("g".to_owned());
        spec.start = StartPosition::Latest;
        let opening = tokio::spawn({
            let store = store.clone();
            async move { Transport::subscribe(&*store, spec).await }
        });
        tokio::time::sleep(close_after).await;
        store.close().await;
        let opened = tokio::time::timeout(END_WAIT, opening)
            .await
            .unwrap_or_else(|_| panic!("closed after {close_after:?}: the subscribe went on"))
            .unwrap();
        match opened {
            Err(e) => assert_eq!(e.code(), ErrorCode::Unavailable, "{e}"),
            Ok(mut sub) => assert!(
                tokio::time::timeout(END_WAIT, sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("closed after {close_after:?}: the stream goes on"))
                    .is_none(),
                "closed after {close_after:?}: nothing to deliver"
            ),
        }
    }
}

/// Where events 1 to `n` of `topic` stand for group `pool`, as its leader
/// (on `bus`) sees them; an error until the leader has made the group's
/// consumer on the topic's stream.
async fn states(bus: &Bus, topic: &str, n: u64) -> herald::Result<Vec<DeliveryState>> {
    let mut states = Vec::new();
    for seq in 1..=n {
        states.push(bus.delivery_state(topic, seq, "pool").await?);
    }
    Ok(states)
}

/// Wait until group `pool`'s leader (on `bus`) holds events 1 to `n` of
/// `topic`, all waiting: before that, a claim may find fewer ready.
async fn until_held(bus: &Bus, topic: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !states(bus, topic, n)
        .await
        .is_ok_and(|s| s.iter().all(|s| *s == DeliveryState::Pending))
    {
        let late = tokio::time::Instant::now() >= deadline;
        assert!(!late, "the leader never held all {n} of {topic}");
        tokio::task::yield_now().await;
    }
}

/// A member in another process claims a backlog's worth at once — its
/// fair share of what is ready, not one event per round trip — and its
/// settlements of all of them, sent together, each reach the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_member_claims_its_fair_share_at_once_and_settles_them_together() {
    let (a, b) = two_processes().await;
    let _leader_side = a.subscribe_raw("jobs.free").group("pool").await.unwrap();
    let mut remote_side = b.subscribe_raw("jobs.free").group("pool").await.unwrap();
    let keyless = (1..=40u64).map(|n| Message::new("jobs.free", Payload::json(&n).unwrap()));
    a.publish(keyless.collect::<Vec<_>>()).await.unwrap();
    until_held(&a, "jobs.free", 40).await;
    let first = recv(&mut remote_side).await;
    // 40 ready over 2 members: the claim took 20, the rest wait for the
    // leader's own member.
    let in_flight = |states: Vec<DeliveryState>| {
        states
            .iter()
            .filter(|s| matches!(s, DeliveryState::InFlight { .. }))
            .count()
    };
    assert_eq!(in_flight(states(&a, "jobs.free", 40).await.unwrap()), 20);
    let mut claimed = vec![first];
    for _ in 1..20 {
        claimed.push(recv(&mut remote_side).await);
    }
    let acks = claimed.into_iter().map(|d| d.ack());
    for acked in futures_util::future::join_all(acks).await {
        acked.unwrap();
    }
    let after = states(&a, "jobs.free", 40).await.unwrap();
    assert_eq!(in_flight(after.clone()), 0, "every ack reached the leader");
    assert_eq!(
        after
            .iter()
            .filter(|s| **s == DeliveryState::Pending)
            .count(),
        20
    );
}

/// A member in another process that closes with claimed events it never
/// handed out gives them back without counting an attempt: only the one
/// its subscriber held and dropped comes again as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_member_closing_hands_back_its_claim_without_an_attempt() {
    let (a, b) = two_processes().await;
    let mut leader_side = a.subscribe_raw("jobs.back").group("pool").await.unwrap();
    let mut remote_side = b.subscribe_raw("jobs.back").group("pool").await.unwrap();
    let keyless = (1..=40u64).map(|n| Message::new("jobs.back", Payload::json(&n).unwrap()));
    a.publish(keyless.collect::<Vec<_>>()).await.unwrap();
    until_held(&a, "jobs.back", 40).await;
    let dropped = recv(&mut remote_side).await;
    drop(dropped);
    remote_side.close();
    drop(remote_side);
    let mut attempts = HashMap::new();
    while attempts.len() < 40 {
        let d = recv(&mut leader_side).await;
        attempts.insert(d.seq().unwrap(), d.attempt());
        d.ack().await.unwrap();
    }
    let again: Vec<_> = attempts.values().filter(|a| **a > 1).collect();
    assert_eq!(again, [&2], "only the dropped delivery counts an attempt");
}

/// The leader answers a malformed settle request and one over the limit
/// with a validation refusal, and a settlement of a delivery it never
/// handed out with the lease-lost error, and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_bad_settle_requests_and_serves_on() {
    let config = support::fresh_config();
    let prefix = config.subject_prefix().to_owned();
    let store = NatsStore::open(config).await.unwrap();
    let a = Bus::new(store.clone());
    let mut member = a.subscribe_raw("jobs.bad").group("pool").await.unwrap();
    let to = format!("{prefix}.$group.g_pool.settle");
    let ask = |body: Vec<u8>| {
        let (client, to) = (store.client().clone(), to.clone());
        async move {
            // The leader starts serving in a task of its own: until it
            // listens, nobody answers.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match client.request(to.clone(), body.clone().into()).await {
                    Ok(reply) => {
                        return serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
                    }
                    Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
                }
                tokio::task::yield_now().await;
            }
        }
    };
    let bad = ask(b"not json".to_vec()).await;
    assert_eq!(bad["err"]["code"], "VALIDATION", "{bad}");
    let too_many: Vec<_> = (0..257)
        .map(|t| serde_json::json!({"token": t, "outcome": {"kind": "ack"}}))
        .collect();
    let over = ask(serde_json::to_vec(&too_many).unwrap()).await;
    assert_eq!(over["err"]["code"], "VALIDATION", "{over}");
    let unknown = ask(br#"[{"token": 999999, "outcome": {"kind": "ack"}}]"#.to_vec()).await;
    assert_eq!(unknown["ok"][0]["err"]["code"], "UNAVAILABLE", "{unknown}");
    // One settlement alone, as a member of an earlier version sends it, is
    // answered alone.
    let alone = ask(br#"{"token": 999999, "outcome": {"kind": "ack"}}"#.to_vec()).await;
    assert_eq!(alone["err"]["code"], "UNAVAILABLE", "{alone}");
    // It still serves its group.
    a.publish([Message::new("jobs.bad", Payload::json(&1).unwrap())])
        .await
        .unwrap();
    recv(&mut member).await.ack().await.unwrap();
}

async fn recv(sub: &mut herald::Subscription) -> herald::Delivery {
    let next = tokio::time::timeout(WAIT, sub.next()).await;
    next.expect("a delivery").unwrap().unwrap()
}

/// Which member got each event, and each key's last event.
#[derive(Default)]
struct Seen {
    sides: HashMap<u64, usize>,
    per_key: HashMap<String, u64>,
}

impl Seen {
    fn record(&mut self, d: &herald::Delivery, side: usize) {
        let n: u64 = d.decode().unwrap();
        let key = d.key().unwrap().to_owned();
        if let Some(last) = self.per_key.insert(key.clone(), n) {
            assert!(last < n, "key {key}: {n} after {last}");
        }
        assert!(self.sides.insert(n, side).is_none(), "event {n} twice");
    }
}

/// A leader whose queue stays full longer than its pull stream's idle
/// heartbeat (a slow member) keeps the messages its pull already brought:
/// they arrive in order, each on its first attempt, not after the
/// consumer's ack wait behind later ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_held_up_by_a_full_queue_loses_nothing_it_pulled() {
    const SLOW_HANDLER: Duration = Duration::from_millis(1_500);
    let (a, _) = two_processes().await;
    let mut sub = a
        .subscribe_raw("jobs.slow")
        .group("slow")
        .buffer(4)
        .await
        .unwrap();
    let one_key = |n: u64| Message::new("jobs.slow", Payload::json(&n).unwrap()).key("one");
    a.publish((1..=20).map(one_key).collect::<Vec<_>>())
        .await
        .unwrap();
    let first = recv(&mut sub).await;
    // The leader's queue is full (its first events wait behind this one)
    // while these reach its pull stream; the handler takes its time.
    a.publish((21..=60).map(one_key).collect::<Vec<_>>())
        .await
        .unwrap();
    tokio::time::sleep(SLOW_HANDLER).await;
    let mut got = vec![(first.decode::<u64>().unwrap(), first.attempt())];
    first.ack().await.unwrap();
    while got.len() < 60 {
        let d = recv(&mut sub).await;
        got.push((d.decode().unwrap(), d.attempt()));
        d.ack().await.unwrap();
    }
    let expected: Vec<(u64, u32)> = (1..=60).map(|n| (n, 1)).collect();
    assert_eq!(got, expected, "(event, attempt) in the order delivered");
}

//! A group whose members are in different processes (here: stores with
//! connections of their own): the processes split the group's partitions
//! and each reads its own straight from JetStream, per-key order holds,
//! and the group goes on when a process leaves.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream;
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
/// processes of one service, making topics of `partitions` partitions.
async fn two_processes(partitions: u32) -> (Bus, Bus) {
    let config = support::fresh_config().partitions(partitions);
    let a = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let b = Bus::new(NatsStore::open(config).await.unwrap());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_two_processes_share_a_group_and_survive_one_leaving() {
    let (a, b) = two_processes(8).await;
    let mut leader_side = a.subscribe_raw("jobs.work").group("workers").await.unwrap();
    let mut remote_side = b.subscribe_raw("jobs.work").group("workers").await.unwrap();

    a.publish((0..40).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    // A member holds one delivery while its state is asked from its own
    // process.
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

    // One process leaves; the other takes the group over.
    leader_side.close();
    a.close().await.unwrap();
    b.publish((40..50).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut after = Vec::new();
    while after.len() < 10 {
        let d = tokio::time::timeout(WAIT, remote_side.next())
            .await
            .expect("the group goes on without its first process")
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
/// deferred one unsettled, also once its reader is gone. (One partition,
/// so the events come in `seq` order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_lists_a_group_with_its_offset_and_lag() {
    let (a, b) = two_processes(1).await;
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
    let (a, b) = two_processes(8).await;
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

/// Two processes on a fresh prefix (8 partitions), and a plain client's
/// JetStream context to look at what they do.
async fn two_processes_apart() -> (String, jetstream::Context, Bus, Bus) {
    let config = support::fresh_config();
    let prefix = config.subject_prefix().to_owned();
    let a = NatsStore::open(config.clone()).await.unwrap();
    let js = jetstream::new(a.client().clone());
    let b = NatsStore::open(config).await.unwrap();
    (prefix, js, Bus::new(a), Bus::new(b))
}

/// Who holds each part of group `group` under `prefix`: the last holder
/// written to each part's lease (`None` for one free), partitions `0..n`
/// then the plain part, read off the lease stream by a plain client.
async fn holders(
    js: &jetstream::Context,
    prefix: &str,
    group: &str,
    n: u32,
) -> Vec<Option<String>> {
    let leases = format!("{}_LEADERS", prefix.replace('.', "_"));
    let Ok(stream) = js.get_stream(&leases).await else {
        return vec![None; n as usize + 1];
    };
    let parts = (0..n).map(|p| format!("p{p}")).chain(["pp".to_owned()]);
    let mut out = Vec::new();
    for part in parts {
        let subject = format!("{prefix}.$lease.g_{group}~{part}");
        out.push(
            stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .ok()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
        );
    }
    out
}

/// Wait until two processes hold group `group`'s parts, split as evenly as
/// they go (5 and 4 of 8 partitions and the plain part).
async fn until_split(js: &jetstream::Context, prefix: &str, group: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = holders(js, prefix, group, 8).await;
        let mut count: HashMap<&str, usize> = HashMap::new();
        for h in held.iter().flatten() {
            *count.entry(h.as_str()).or_default() += 1;
        }
        let mut counts: Vec<usize> = count.values().copied().collect();
        counts.sort_unstable();
        if held.iter().all(Option::is_some) && counts == [4, 5] {
            return held.into_iter().flatten().collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never split: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two processes split a group's partitions, and each reads its own
/// straight from JetStream: every event reaches the process holding its
/// partition (read off the message's subject by a plain client), each key
/// in order, and an event in flight in one process is known as such in
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_reads_the_partitions_it_holds() {
    let (prefix, js, a, b) = two_processes_apart().await;
    let mut a_side = a.subscribe_raw("jobs.split").group("split").await.unwrap();
    let mut b_side = b.subscribe_raw("jobs.split").group("split").await.unwrap();
    let held = until_split(&js, &prefix, "split").await;

    let keyed =
        |n: u64| Message::new("jobs.split", Payload::json(&n).unwrap()).key(format!("k{}", n % 24));
    a.publish((0..120).map(keyed).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut seen = Seen::default();
    let mut ids = [None, None];
    let mut asked = false;
    while seen.sides.len() < 120 {
        let (d, side) = tokio::select! {
            d = a_side.next() => (d.unwrap().unwrap(), 0),
            d = b_side.next() => (d.unwrap().unwrap(), 1),
            _ = tokio::time::sleep(WAIT) => panic!("the group stalled at {} events", seen.sides.len()),
        };
        seen.record(&d, side);
        ids[side] = Some(d.seq().unwrap());
        if !asked && side == 0 {
            // Held by a; b asks the reader of its part.
            let state = b
                .delivery_state("jobs.split", d.seq().unwrap(), "split")
                .await;
            assert_eq!(state.unwrap(), DeliveryState::InFlight { attempt: 1 });
            asked = true;
        }
        d.ack().await.unwrap();
    }
    assert!(ids.iter().all(Option::is_some), "both processes took work");

    // Which partition each event is in, from its subject.
    let stream = js
        .stream_by_subject(format!("{prefix}.jobs.split"))
        .await
        .unwrap();
    let stream = js.get_stream(stream).await.unwrap();
    let mut holder_of_side: HashMap<usize, String> = HashMap::new();
    for seq in 1..=120u64 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let n: u64 = serde_json::from_slice(&msg.payload).unwrap();
        let partition: usize = msg
            .subject
            .split('.')
            .skip_while(|t| *t != "$part")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("a partition subject");
        let side = seen.sides[&n];
        let holder = &held[partition];
        let known = holder_of_side.entry(side).or_insert_with(|| holder.clone());
        assert_eq!(
            known, holder,
            "event {n} (partition {partition}) went to a process not holding it"
        );
    }
    assert_eq!(holder_of_side.len(), 2);
}

/// A process that leaves hands its partitions to the other, with what it
/// held: events its member never got come again as attempt 1, the one it
/// held unsettled as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_leaving_hands_its_partitions_over_with_their_attempts() {
    let (prefix, js, a, b) = two_processes_apart().await;
    let mut a_side = a
        .subscribe_raw("jobs.back")
        .group("back")
        .max_in_flight(1)
        .await
        .unwrap();
    let mut b_side = b.subscribe_raw("jobs.back").group("back").await.unwrap();
    until_split(&js, &prefix, "back").await;
    let keyed = |n: u64| Message::new("jobs.back", Payload::json(&n).unwrap()).key(format!("k{n}"));
    a.publish((1..=40).map(keyed).collect::<Vec<_>>())
        .await
        .unwrap();
    let held = recv(&mut a_side).await;
    let held_n: u64 = held.decode().unwrap();
    std::mem::forget(held);
    let mut attempts = HashMap::new();
    // b works through its own while a holds one and the rest of its
    // partitions wait in its queue; then a leaves.
    let closing = tokio::spawn(async move {
        a_side.close();
        a.close().await.unwrap();
    });
    while attempts.len() < 39 {
        let d = recv(&mut b_side).await;
        let n: u64 = d.decode().unwrap();
        assert!(attempts.insert(n, d.attempt()).is_none(), "event {n} twice");
        d.ack().await.unwrap();
    }
    closing.await.unwrap();
    assert!(!attempts.contains_key(&held_n) || attempts[&held_n] == 2);
    while attempts.len() < 40 {
        let d = recv(&mut b_side).await;
        attempts.insert(d.decode().unwrap(), d.attempt());
        d.ack().await.unwrap();
    }
    let again: Vec<_> = attempts.iter().filter(|(_, a)| **a > 1).collect();
    assert_eq!(
        again,
        [(&held_n, &2)],
        "only the held delivery counts an attempt"
    );
}

/// A part's reader refuses a malformed state request, stays silent on an
/// event it does not hold (the asker then reads the consumer), answers one
/// it holds, and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_refuses_bad_state_requests_and_serves_on() {
    let config = support::fresh_config().partitions(1);
    let prefix = config.subject_prefix().to_owned();
    let store = NatsStore::open(config).await.unwrap();
    let a = Bus::new(store.clone());
    let mut member = a.subscribe_raw("jobs.bad").group("pool").await.unwrap();
    a.publish([Message::new("jobs.bad", Payload::json(&1).unwrap()).key("k")])
        .await
        .unwrap();
    let held = recv(&mut member).await;
    let to = format!("{prefix}.$group.g_pool~p0.state");
    let client = store.client().clone();
    // An answer within `wait`, if any: silence can only be shown by
    // waiting, and a short wait cannot make it fail.
    let ask = |body: &'static [u8], wait: Duration| {
        let (client, to) = (client.clone(), to.clone());
        async move {
            let reply = tokio::time::timeout(wait, client.request(to, body.into())).await;
            reply
                .ok()
                .and_then(Result::ok)
                .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap())
        }
    };
    let bad = ask(b"not json", WAIT).await.expect("an answer");
    assert_eq!(bad["err"]["code"], "VALIDATION", "{bad}");
    let unknown = br#"{"topic": "jobs.bad", "seq": 99}"#;
    assert!(ask(unknown, Duration::from_millis(500)).await.is_none());
    let known = ask(br#"{"topic": "jobs.bad", "seq": 1}"#, WAIT)
        .await
        .expect("an answer");
    assert_eq!(known["ok"]["state"], "in_flight", "{known}");
    assert_eq!(known["ok"]["attempt"], 1, "{known}");
    held.ack().await.unwrap();
    a.publish([Message::new("jobs.bad", Payload::json(&2).unwrap()).key("k")])
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
    let (a, _) = two_processes(8).await;
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

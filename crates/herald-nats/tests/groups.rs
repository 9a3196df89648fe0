//! A group whose members are in different processes (here: stores with
//! connections of their own): they share the work through the leader, keep
//! per-key order, and the group goes on when the leader's process leaves.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, DeliveryState, Message, Payload};
use herald_nats::NatsStore;

const WAIT: Duration = Duration::from_secs(20);

fn numbered(n: u64) -> Message {
    Message::new("jobs.work", Payload::json(&n).unwrap()).key(format!("k{}", n % 5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_two_processes_share_a_group_and_survive_the_leader_leaving() {
    let config = support::fresh_config();
    let a = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let b = Bus::new(NatsStore::open(config).await.unwrap());
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

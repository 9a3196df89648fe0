//! What a durable store must keep when its data moves to another place or
//! another version: a copy taken by a backup, a schema migrated by an
//! upgrade. The store's own test brings the data across; this module
//! writes a history on the way in and checks it on the way out, so every
//! store checks the same things.
//!
//! Owns [`History`] ([`write`] and [`History::check`]): events on two topics,
//! a group part-way through them, a dead letter.

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, StartPosition};
use uuid::Uuid;

/// The topics of a history.
const TOPICS: [&str; 2] = ["kept.placed", "kept.paid"];

/// A history written on a store: what a place it moves to must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Each event's topic, `seq` and id, in topic then `seq` order.
    pub events: Vec<(String, Option<u64>, Uuid)>,
    /// The one dead letter: its store id, its event's id, its reason.
    pub dead_letter: (u64, Uuid, String),
}

/// Write a history on `bus`: six events on two topics, group `billing`
/// acking the first and third and terming the second (its dead letter), so
/// the group's next event is the fourth.
pub async fn write(bus: &Bus) -> History {
    let mut billing = bus
        .subscribe_raw("kept.>")
        .group("billing")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let batch: Vec<Message> = (1..=6u64)
        .map(|n| Message::json(TOPICS[(n % 2) as usize], &n).unwrap())
        .collect();
    bus.publish(batch).await.unwrap();
    for n in 1..=3u64 {
        let d = next(&mut billing).await;
        assert_eq!(d.decode::<u64>().unwrap(), n);
        match n {
            2 => d.term(ErrorCode::Validation, "bad").await.unwrap(),
            _ => d.ack().await.unwrap(),
        }
    }
    let history = read(bus).await;
    assert_eq!(history.events.len(), 6);
    history
}

impl History {
    /// Check that `bus` holds this history: every event with its id and
    /// `seq`, the dead letter, and group `billing` resuming at the fourth
    /// event.
    pub async fn check(&self, bus: &Bus) {
        assert_eq!(&read(bus).await, self);
        let mut billing = bus.subscribe_raw("kept.>").group("billing").await.unwrap();
        let resumed = next(&mut billing).await;
        assert_eq!(
            resumed.decode::<u64>().unwrap(),
            4,
            "the group resumes where it was"
        );
    }
}

async fn read(bus: &Bus) -> History {
    let mut events = Vec::new();
    for topic in TOPICS {
        let stored = bus
            .replay(topic, StartPosition::Earliest, 100)
            .await
            .unwrap();
        events.extend(
            stored
                .iter()
                .map(|e| (e.topic().to_string(), e.seq(), e.id())),
        );
    }
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    History {
        events,
        dead_letter: (d.id, d.envelope.id(), d.reason.clone()),
    }
}

async fn next(sub: &mut herald::Subscription) -> herald::Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a delivery within 30 s")
        .expect("the subscription is open")
        .expect("a delivery, not an error")
}

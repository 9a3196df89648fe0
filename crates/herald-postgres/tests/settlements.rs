//! Settlements of different kinds committed together by the store's
//! settlement writer: each takes the effect it would have alone.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::config::DeliveryConfig;
use herald::{Bus, DeliveryState, ErrorCode, Message, StartPosition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_a_nack_and_a_term_in_one_commit_each_take_effect() {
    // Batches of three, with a window: the three settlements below fill
    // one and commit together, at once.
    let delivery = DeliveryConfig::default()
        .poll_interval(Duration::from_millis(200))
        .settle_batch(3)
        .settle_window(Duration::from_millis(100));
    let config = support::fresh_config().await.delivery(delivery);
    let store = herald_postgres::PgStore::open(config).await.unwrap();
    let bus = Bus::new(store);
    let topic = "settle.mixed";
    let mut member = bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let batch: Vec<_> = (1..=3u32)
        .map(|i| Message::json(topic, &i).unwrap().key(format!("k{i}")))
        .collect();
    bus.publish(batch).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 3 {
        held.push(member.next().await.unwrap().unwrap());
    }
    held.sort_by_key(|d| d.envelope().seq());
    let mut held = held.into_iter();
    let (first, second, third) = (
        held.next().unwrap(),
        held.next().unwrap(),
        held.next().unwrap(),
    );
    let (acked, nacked, termed) = tokio::join!(
        first.ack(),
        second.nack(),
        third.term(ErrorCode::Validation, "bad input")
    );
    acked.unwrap();
    nacked.unwrap();
    termed.unwrap();
    assert_eq!(
        bus.delivery_state(topic, 1, "g").await.unwrap(),
        DeliveryState::Acked
    );
    assert_eq!(
        bus.delivery_state(topic, 3, "g").await.unwrap(),
        DeliveryState::DeadLettered
    );
    // The nacked event comes again, with its next attempt.
    let again = member.next().await.unwrap().unwrap();
    assert_eq!(
        (again.envelope().seq(), again.envelope().attempt()),
        (Some(2), 2)
    );
    again.ack().await.unwrap();
    assert_eq!(
        bus.delivery_state(topic, 2, "g").await.unwrap(),
        DeliveryState::Acked
    );
    bus.close().await.unwrap();
}

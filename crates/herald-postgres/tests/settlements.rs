//! Settlements of different kinds committed together by the store's
//! settlement writer: each takes the effect it would have alone.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::config::DeliveryConfig;
use herald::{Bus, DeliveryState, ErrorCode, Message, StartPosition};

/// A member of group `g` on `topic`, from its first event.
async fn member_of_g(bus: &Bus, topic: &str) -> herald::Subscription {
    bus.subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap()
}

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
    let mut member = member_of_g(&bus, topic).await;
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

/// A settlement takes the lease lock a claim tries (and skips the event
/// when held) before it touches the delivery's row, so the two never wait
/// for each other's rows: they deadlocked that way, and the server breaks
/// a deadlock only after `deadlock_timeout` (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_waits_for_the_lease_lock_a_claim_holds() {
    let store = herald_postgres::PgStore::open(support::fresh_config().await)
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let topic = "settle.locked";
    let mut member = member_of_g(&bus, topic).await;
    bus.publish(Message::json(topic, &1u32).unwrap().key("k"))
        .await
        .unwrap();
    let delivery = member.next().await.unwrap().unwrap();
    // Another session holds the lock, as a claim leasing `pos` 1 would.
    let key = format!("herald.claim.{}.g", store.schema());
    let mut claim = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
        .bind(&key)
        .execute(&mut *claim)
        .await
        .unwrap();
    let ack = tokio::spawn(delivery.ack());
    // The ack waits for that lock (state, not time: the server says so).
    let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND (classid::bigint << 32) | objid::bigint = hashtextextended($1, 1)";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline && !ack.is_finished(),
            "the ack never waited for the lease lock"
        );
        let n: i64 = sqlx::query_scalar(waiting)
            .bind(&key)
            .fetch_one(store.pool())
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!ack.is_finished(), "the ack went past a held lease lock");
    claim.commit().await.unwrap();
    ack.await.unwrap().unwrap();
    assert_eq!(
        bus.delivery_state(topic, 1, "g").await.unwrap(),
        DeliveryState::Acked
    );
    bus.close().await.unwrap();
}

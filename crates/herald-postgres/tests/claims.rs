//! How a group's claims meet each other and the group's row: they never
//! wait for it. The cursor's move holds the row `FOR NO KEY UPDATE`; here
//! another session holds that lock for the whole test, and the group's
//! members must still get every event (a claim that locked the row, as
//! claims once did, waits for that session and delivers nothing). A
//! process's members of a group claim as one.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, Message, StartPosition};

/// Generous: a claim that waits for the row never delivers at all.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// A bus on a fresh store with group `g` on `topic` (its member, which
/// took and acked one event), and another session's transaction holding
/// the group's row in `lock` mode.
async fn group_with_its_row_held(
    topic: &'static str,
    lock: &str,
) -> (
    Bus,
    herald::Subscription,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let store = herald_postgres::PgStore::open(support::fresh_config().await)
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let mut member = bus
        .subscribe_raw(topic)
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    // The group exists once a member has claimed: make it so.
    bus.publish(Message::json(topic, &0u32).unwrap())
        .await
        .unwrap();
    let d = tokio::time::timeout(DELIVERY_WAIT, member.next())
        .await
        .expect("the first event")
        .unwrap()
        .unwrap();
    d.ack().await.unwrap();

    let mut holder = store.pool().begin().await.unwrap();
    let locked: Option<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM \"{}\".groups WHERE name = 'g' FOR {lock}",
        store.schema()
    ))
    .fetch_optional(&mut *holder)
    .await
    .unwrap();
    assert_eq!(locked.as_deref(), Some("g"), "the group's row is held");
    (bus, member, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_claim_while_another_session_holds_the_groups_row() {
    let topic = "claims.rowlock";
    let (bus, mut first, holder) = group_with_its_row_held(topic, "NO KEY UPDATE").await;
    let mut second = bus.subscribe_raw(topic).group("g").await.unwrap();

    const N: u32 = 40;
    let batch: Vec<_> = (1..=N)
        .map(|i| Message::json(topic, &i).unwrap().key(format!("k{}", i % 7)))
        .collect();
    bus.publish(batch).await.unwrap();
    let mut got = HashSet::new();
    while got.len() < N as usize {
        let d = tokio::select! {
            d = first.next() => d,
            d = second.next() => d,
            _ = tokio::time::sleep(DELIVERY_WAIT) => panic!(
                "members stalled after {} of {N} events while the group's row was held",
                got.len()
            ),
        }
        .expect("a member's stream ended")
        .unwrap();
        let n: u32 = d.decode().unwrap();
        assert!(got.insert(n), "event {n} delivered twice");
        d.ack().await.unwrap();
    }
    holder.rollback().await.unwrap();
    bus.close().await.unwrap();
}

/// A claim that moves the cursor far enough sweeps the delivery rows below
/// it, and the sweep waits for every claim holding the group's row. Here
/// another session holds the row `FOR KEY SHARE` (as a claim does) for the
/// whole test: the member must still get every event, its claims answering
/// before their sweeps (a claim that swept before it answered held the
/// events it leased until the row was free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_waiting_for_the_groups_row_does_not_hold_back_a_claim() {
    let topic = "claims.sweep";
    let (bus, mut member, holder) = group_with_its_row_held(topic, "KEY SHARE").await;

    // Past two sweep steps (1,024 events each), over 10 keys.
    const N: u32 = 2_500;
    for chunk in 0..N / 100 {
        let batch: Vec<_> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i + 1;
                Message::json(topic, &n)
                    .unwrap()
                    .key(format!("k{}", n % 10))
            })
            .collect();
        bus.publish(batch).await.unwrap();
    }
    let mut got = HashSet::new();
    while got.len() < N as usize {
        let d = tokio::time::timeout(DELIVERY_WAIT, member.next())
            .await
            .unwrap_or_else(|_| panic!("the member stalled after {} of {N} events", got.len()))
            .expect("the stream ended")
            .unwrap();
        let n: u32 = d.decode().unwrap();
        assert!(got.insert(n), "event {n} delivered twice");
        d.ack().await.unwrap();
    }
    holder.rollback().await.unwrap();
    bus.close().await.unwrap();
}

/// The members of a group on one store handle share its claims: the group
/// records one member for them, and they still split its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_s_members_of_a_group_claim_as_one() {
    let topic = "claims.shared";
    let store = herald_postgres::PgStore::open(support::fresh_config().await)
        .await
        .unwrap();
    let bus = Bus::new(store.clone());
    let mut members = Vec::new();
    for _ in 0..3 {
        let sub = bus
            .subscribe_raw(topic)
            .group("g")
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        members.push(sub);
    }
    const N: u32 = 30;
    let batch: Vec<_> = (1..=N).map(|i| Message::json(topic, &i).unwrap()).collect();
    bus.publish(batch).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let closers: Vec<_> = members.iter().map(|m| m.close_handle()).collect();
    let tasks: Vec<_> = members
        .into_iter()
        .map(|mut sub| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = sub.next().await {
                    let n: u32 = d.decode().unwrap();
                    d.ack().await.unwrap();
                    tx.send(n).unwrap();
                }
            })
        })
        .collect();
    let mut got = HashSet::new();
    while got.len() < N as usize {
        let n = tokio::time::timeout(DELIVERY_WAIT, rx.recv())
            .await
            .expect("the members stalled")
            .unwrap();
        assert!(got.insert(n), "event {n} delivered twice");
    }
    let recorded: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".members WHERE grp = 'g'",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(recorded, 1, "three members of one process are one claimer");
    for close in closers {
        close.close();
    }
    for task in tasks {
        task.await.unwrap();
    }
    bus.close().await.unwrap();
}

//! Batches, payload limits, dedupe and backpressure (DESIGN.md §4.1, §4.7, §4.8).

use herald::config::DeliveryConfig;
use herald::{Bus, ErrorCode, Message, Payload};

use crate::support::{number, numbered, numbers, recv, seqs};
use crate::Harness;

/// A batch with one bad message publishes nothing; a good batch spanning
/// topics is appended whole.
pub async fn batch_is_atomic_and_validated_first(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus
        .subscribe_raw("conf.atomic.>")
        .ephemeral()
        .await
        .unwrap();
    let err = bus
        .publish([numbered("conf.atomic.a", 1), numbered("conf.atomic.Bad", 2)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert_eq!(
        bus.last_seq("conf.atomic.a").await.unwrap(),
        None,
        "nothing of the batch was appended"
    );

    let seqs = bus
        .publish([
            numbered("conf.atomic.a", 3),
            numbered("conf.atomic.b", 4),
            numbered("conf.atomic.a", 5),
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [1, 1, 2]);
    let mut numbers = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut sub).await;
        numbers.push(number(&d));
        d.ack().await.unwrap();
    }
    numbers.sort_unstable();
    assert_eq!(numbers, [3, 4, 5]);
}

/// A payload of exactly the limit passes; one byte more is `BACKPRESSURE`.
pub async fn payload_limit_is_inclusive(h: &Harness) {
    let bus = h.bus().await;
    let limit = bus.config().limits().payload_bytes();
    let exact = "x".repeat(limit - 2);
    let at_limit = Payload::json(&exact).unwrap();
    assert_eq!(at_limit.len(), limit);
    bus.publish(Message::new("conf.size", at_limit))
        .await
        .unwrap();
    let over = Payload::json(&format!("{exact}x")).unwrap();
    let err = bus
        .publish(Message::new("conf.size", over))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backpressure);
    assert_eq!(bus.last_seq("conf.size").await.unwrap(), Some(1));
    let bytes = Payload::bytes(vec![0u8; limit + 1]);
    let err = bus
        .publish(Message::new("conf.size", bytes).content_type("application/octet-stream"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backpressure);
}

/// A second publish with the same `idempotency_key` returns the original
/// `seq` and is not delivered again.
pub async fn duplicate_idempotency_key_returns_original_seq(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.dedupe").ephemeral().await.unwrap();
    let first = bus
        .publish(numbered("conf.dedupe", 1).idempotency_key("order-42"))
        .await
        .unwrap();
    bus.publish(numbered("conf.dedupe", 2)).await.unwrap();
    let again = bus
        .publish(numbered("conf.dedupe", 3).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(first, again, "the duplicate gets the original seq");
    let in_batch = bus
        .publish([
            numbered("conf.dedupe", 4).idempotency_key("order-43"),
            numbered("conf.dedupe", 5).idempotency_key("order-43"),
        ])
        .await
        .unwrap();
    assert_eq!(
        in_batch[0], in_batch[1],
        "duplicates within one batch collapse too"
    );
    bus.publish(numbered("conf.dedupe", 6)).await.unwrap();
    let got: Vec<u64> = numbers(&mut sub, 4).await;
    assert_eq!(got, [1, 2, 4, 6]);
}

/// A subscriber that does not read fills its buffer: publishes to other
/// topics go on, and once it reads it gets every event, in order.
pub async fn full_subscriber_never_blocks_other_topics_or_loses_events(h: &Harness) {
    const BUFFER: usize = 4;
    let bus = h.bus().await;
    let mut slow = bus
        .subscribe_raw("conf.full.slow")
        .ephemeral()
        .buffer(BUFFER)
        .await
        .unwrap();
    let mut other = bus
        .subscribe_raw("conf.full.other")
        .ephemeral()
        .await
        .unwrap();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 1..=(BUFFER as u64 * 3) {
                seqs.extend(bus.publish(numbered("conf.full.slow", i)).await.unwrap());
            }
            seqs
        })
    };
    for i in 1..=20 {
        bus.publish(numbered("conf.full.other", i)).await.unwrap();
    }
    let got: Vec<u64> = numbers(&mut other, 20).await;
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "the other topic flows");
    let slow_got: Vec<u64> = seqs(&mut slow, BUFFER * 3).await;
    assert_eq!(
        slow_got,
        (1..=BUFFER as u64 * 3).collect::<Vec<_>>(),
        "nothing lost"
    );
    assert_eq!(publisher.await.unwrap().len(), BUFFER * 3);
}

/// `HERALD_DEDUPE_WINDOW=forever` on a SQL store (DESIGN.md §9): a key is
/// deduped however long ago it was appended; a store opened with a window
/// again appends it anew once the window has passed; and a log that
/// repeats a key cannot be opened with `forever` (its keys cannot be made
/// unique). `open` opens the same store with the settings given (closing
/// is the caller's `Bus::close`), `age` makes every logged event look
/// appended 30 days ago.
pub async fn a_key_is_deduped_forever_on_a_sql_store<O, OF, A, AF>(open: O, age: A)
where
    O: Fn(DeliveryConfig) -> OF,
    OF: std::future::Future<Output = herald::Result<Bus>>,
    A: Fn() -> AF,
    AF: std::future::Future<Output = ()>,
{
    let forever = || DeliveryConfig::default().dedupe_forever();
    let key = |n| numbered("conf.forever", n).idempotency_key("order-42");
    let bus = open(forever()).await.unwrap();
    let first = bus.publish(key(1)).await.unwrap();
    bus.close().await.unwrap();
    age().await;

    let bus = open(forever()).await.unwrap();
    assert_eq!(bus.publish(key(2)).await.unwrap(), first, "kept forever");
    bus.close().await.unwrap();

    let bus = open(DeliveryConfig::default()).await.unwrap();
    let anew = bus.publish(key(3)).await.unwrap();
    assert_ne!(anew, first, "past a window, the key is appended again");
    bus.close().await.unwrap();

    let err = open(forever()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(err.to_string().contains("forever"), "{err}");
}

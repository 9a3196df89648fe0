//! Handler middleware and effects on each transport: effects published
//! once with the ack, dedupe of redeliveries, an open breaker deferring
//! without losing anything, per-key rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::breaker::{BreakerState, CircuitBreaker};
use herald::dedupe::Dedupe;
use herald::rate_limit::RateLimit;
use herald::testing::{FaultLayer, Faults};
use herald::{DeliveryState, Envelope, ErrorCode, Message, StartPosition};

use crate::support::{numbered, Tally, DELIVERY_WAIT};
use crate::Harness;

fn n_of(env: &Envelope) -> u64 {
    env.decode::<serde_json::Value>().unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// A handler's effects are published with its ack and inherit its
/// correlation; when the ack is lost and the message runs again, the
/// effects still appear once.
pub async fn effects_are_published_once_despite_a_lost_ack(h: &Harness) {
    let faults = Faults::new();
    let bus = faults.wrap_bus(&h.bus().await);
    let tally = Tally::new();
    let mut out = bus
        .subscribe_raw("conf.fx.out")
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let handler =
        bus.handler("conf.fx.in")
            .group("fx")
            .start(StartPosition::Earliest)
            .ack_wait(Duration::from_millis(500))
            .observe(tally.clone())
            .run(|env| async move {
                Message::json("conf.fx.out", &serde_json::json!({ "n": n_of(&env) }))
            })
            .await
            .unwrap();
    faults.lose_acks(1);
    let inputs: Vec<_> = (0..5).map(|i| numbered("conf.fx.in", i)).collect();
    bus.publish(inputs).await.unwrap();
    // The lost ack reads as a failure (retried), then the message runs again.
    tally.until("retried", 1).await;
    tally.until("acked", 5).await;
    for seq in 1..=5 {
        let state = bus.delivery_state("conf.fx.in", seq, "fx").await.unwrap();
        assert_eq!(state, DeliveryState::Acked);
    }
    handler.shutdown(DELIVERY_WAIT).await;
    // Effects may reach the log after their acks (PostgreSQL sequences its
    // outbox in a task): a marker published now lands after every effect
    // committed before it, and its answer comes once it is in the log.
    bus.publish(Message::json("conf.fx.out", &serde_json::json!({ "marker": true })).unwrap())
        .await
        .unwrap();
    assert_eq!(
        bus.last_seq("conf.fx.out").await.unwrap(),
        Some(6),
        "one effect per input, none twice, then the marker"
    );
    let inputs = correlations(&bus, "conf.fx.in", 5).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let d = crate::recv(&mut out).await;
        if d.decode::<serde_json::Value>().unwrap()["marker"] == true {
            d.ack().await.unwrap();
            continue;
        }
        let n = n_of(&d);
        seen.push(n);
        let (cause, correlation) = inputs[&n];
        assert_eq!(d.causation_id(), Some(cause), "an effect names its cause");
        assert_eq!(d.correlation_id(), correlation, "and keeps its correlation");
        d.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}

/// Each input's (id, correlation id) by its payload number, read back from
/// the start of `topic`.
async fn correlations(
    bus: &herald::Bus,
    topic: &str,
    n: usize,
) -> HashMap<u64, (uuid::Uuid, uuid::Uuid)> {
    let mut sub = bus
        .subscribe_raw(topic)
        .ephemeral()
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for _ in 0..n {
        let d = crate::recv(&mut sub).await;
        out.insert(n_of(&d), (d.id(), d.correlation_id()));
        d.ack().await.unwrap();
    }
    out
}

/// A typed handler gets decoded events; one whose payload does not decode
/// is dead-lettered with `VALIDATION` without reaching it.
pub async fn typed_handler_dead_letters_what_does_not_decode(h: &Harness) {
    #[derive(herald::Event, Debug)]
    #[event(prefix = "conf.typed")]
    enum Shape {
        Square { side: u32 },
    }
    let bus = h.bus().await;
    let tally = Tally::new();
    let sides = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let sides = sides.clone();
        bus.handler_for::<Shape>()
            .group("typed")
            .start(StartPosition::Earliest)
            .concurrency(1)
            .observe(tally.clone())
            .run_typed(move |Shape::Square { side }| {
                sides.lock().unwrap().push(side);
                async { Ok(()) }
            })
            .await
            .unwrap()
    };
    bus.publish([
        Message::json("conf.typed.square", &serde_json::json!({ "side": 3 })).unwrap(),
        Message::json("conf.typed.square", &serde_json::json!({ "side": "three" })).unwrap(),
        Message::json("conf.typed.square", &serde_json::json!({ "side": 4 })).unwrap(),
    ])
    .await
    .unwrap();
    tally.until("acked", 2).await;
    tally.until("dead", 1).await;
    handler.shutdown(DELIVERY_WAIT).await;
    assert_eq!(*sides.lock().unwrap(), [3, 4]);
    let dead = bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, ErrorCode::Validation);
    assert_eq!(dead[0].envelope.seq(), Some(2));
}

/// With dedupe kept in the store ([`Dedupe::in_store`]), a message
/// redelivered after its handler already ran (its ack was lost) is acked
/// without running again.
pub async fn dedupe_skips_redelivered_messages_that_already_ran(h: &Harness) {
    let faults = Faults::new();
    let bus = faults.wrap_bus(&h.bus().await);
    let dedupe = Dedupe::in_store(&bus, Duration::from_secs(3600)).unwrap();
    let tally = Tally::new();
    let runs = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let handler = {
        let runs = runs.clone();
        bus.handler("conf.dd")
            .group("dd")
            .start(StartPosition::Earliest)
            .layer(dedupe)
            .observe(tally.clone())
            .run(move |env| {
                *runs.lock().unwrap().entry(n_of(&env)).or_default() += 1;
                async { Ok(()) }
            })
            .await
            .unwrap()
    };
    faults.lose_acks(2);
    let inputs: Vec<_> = (0..4).map(|i| numbered("conf.dd", i)).collect();
    bus.publish(inputs).await.unwrap();
    // Two lost acks (retried), then their redeliveries acked without a run.
    tally.until("retried", 2).await;
    tally.until("acked", 4).await;
    handler.shutdown(DELIVERY_WAIT).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4);
    assert!(
        runs.values().all(|&n| n == 1),
        "each message ran once: {runs:?}"
    );
}

/// Failures open the breaker; while it is open messages are deferred —
/// not counted as attempts, not dead-lettered — and all are handled once
/// it closes.
pub async fn open_breaker_defers_and_loses_nothing(h: &Harness) {
    let bus = h.bus().await;
    let breaker = CircuitBreaker::builder()
        .threshold(2)
        .reset_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut states = breaker.watch();
    let tally = Tally::new();
    let handler = bus
        .handler("conf.cb")
        .group("cb")
        .start(StartPosition::Earliest)
        .concurrency(1)
        .layer(breaker.clone())
        .layer(FaultLayer::new().fail(3, ErrorCode::Unavailable))
        .observe(tally.clone())
        .run(|_env| async { Ok(()) })
        .await
        .unwrap();
    let inputs: Vec<_> = (0..6).map(|i| numbered("conf.cb", i)).collect();
    bus.publish(inputs).await.unwrap();
    tokio::time::timeout(DELIVERY_WAIT, states.wait_for(|s| *s == BreakerState::Open))
        .await
        .expect("the breaker opens")
        .unwrap();
    tally.until("acked", 6).await;
    let report = handler.shutdown(DELIVERY_WAIT).await;
    assert_eq!(report.acked, 6);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(report.retried, 3);
    assert_eq!(breaker.state(), BreakerState::Closed);
    let dead = bus.dead_letters().await.unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}

/// A per-key rate limit spaces one key's calls by the period and lets
/// other keys through. The limiter is exact on the start times it hands
/// out; the handler sees them a scheduling delay later, hence the 20 ms
/// allowance (the exact check runs under paused time in herald's tests).
pub async fn per_key_rate_limit_spaces_calls_of_one_key(h: &Harness) {
    let bus = h.bus().await;
    let period = Duration::from_millis(200);
    let starts = Arc::new(Mutex::new(
        HashMap::<String, Vec<tokio::time::Instant>>::new(),
    ));
    let tally = Tally::new();
    let handler = {
        let starts = starts.clone();
        bus.handler("conf.rl")
            .group("rl")
            .start(StartPosition::Earliest)
            .layer(RateLimit::per_key(2, period).unwrap())
            .observe(tally.clone())
            .run(move |env| {
                let key = env.key().unwrap_or_default().to_owned();
                starts
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .push(tokio::time::Instant::now());
                async { Ok(()) }
            })
            .await
            .unwrap()
    };
    let inputs: Vec<_> = (0..12)
        .map(|i| numbered("conf.rl", i).key(if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    bus.publish(inputs).await.unwrap();
    tally.until("acked", 12).await;
    handler.shutdown(DELIVERY_WAIT).await;
    let starts = starts.lock().unwrap().clone();
    for (key, times) in &starts {
        assert_eq!(times.len(), 6);
        for w in times.windows(3) {
            assert!(
                w[2] - w[0] >= period - Duration::from_millis(20),
                "key {key}: 3 calls within {:?}",
                w[2] - w[0]
            );
        }
    }
}

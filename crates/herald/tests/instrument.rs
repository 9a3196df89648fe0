//! herald records its own metrics by default: publish, dispatch, fan-out,
//! handler duration and outcome, end-to-end latency, dead letters, consumer
//! lag and breaker state; and none when told not to.

use std::time::Duration;

use futures_util::StreamExt;
use herald::breaker::CircuitBreaker;
use herald::instrument::{
    BREAKER_STATE, CONSUMER_LAG, DEAD_LETTERS, DISPATCH_SECONDS, END_TO_END_SECONDS,
    FANOUT_SECONDS, HANDLER_CALLS, HANDLER_SECONDS, PUBLISH_SECONDS,
};
use herald::{Bus, Error, ErrorCode, Message, Payload, StartPosition};

fn len(bus: &Bus, name: &str) -> usize {
    bus.metrics().get(name).map_or(0, |m| m.len())
}

#[tokio::test]
async fn publish_fan_out_and_dispatch_are_timed() {
    let bus = Bus::memory();
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(bus.subscribe_raw("orders.>").await.unwrap());
    }
    bus.publish(Message::json("orders.placed", &1u32).unwrap())
        .await
        .unwrap();
    for sub in &mut subs {
        sub.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    assert_eq!(len(&bus, PUBLISH_SECONDS), 1);
    assert_eq!(len(&bus, FANOUT_SECONDS), 3, "one per subscriber");
    let fanout = bus.metrics().get(FANOUT_SECONDS).unwrap();
    let max = fanout.percentile(herald::metrics::Percentile::MAX).unwrap();
    assert!((0.0..5.0).contains(&max), "fan-out {max} s");

    let _h = bus
        .handle_command("math.double", |req| async move {
            Payload::json(&(req.decode::<u64>()? * 2))
        })
        .unwrap();
    bus.call(Message::json("math.double", &2u64).unwrap())
        .await
        .unwrap();
    assert!(bus
        .call(Message::json("math.none", &2u64).unwrap())
        .await
        .is_err());
    assert_eq!(len(&bus, DISPATCH_SECONDS), 2, "failed calls are timed too");
}

#[tokio::test]
async fn handlers_record_duration_outcome_end_to_end_dead_letters_and_lag() {
    let bus = Bus::memory();
    for n in 0..5u32 {
        bus.publish(Message::json("jobs.run", &n).unwrap())
            .await
            .unwrap();
    }
    let handler = bus
        .handler("jobs.>")
        .group("workers")
        .start(StartPosition::Earliest)
        .concurrency(1)
        .run(|msg| async move {
            match msg.decode::<u32>()? {
                3 => Err(Error::terminal(ErrorCode::Validation, "never")),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
    let m = bus.metrics();
    let calls = |outcome: &str| m.counter(HANDLER_CALLS, &[("outcome", outcome)]).get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while calls("acked") + calls("dead_lettered") < 5 {
        assert!(tokio::time::Instant::now() < deadline, "handled only some");
        tokio::task::yield_now().await;
    }
    assert_eq!((calls("acked"), calls("dead_lettered")), (4, 1));
    assert_eq!(m.counter(DEAD_LETTERS, &[]).get(), 1);
    assert_eq!(len(&bus, HANDLER_SECONDS), 5);
    assert_eq!(len(&bus, END_TO_END_SECONDS), 4, "acked ones");
    // The first call saw 4 events after its own.
    let lag = m.gauge(CONSUMER_LAG, &[("group", "workers"), ("topic", "jobs.run")]);
    while lag.get() != 4.0 {
        assert!(tokio::time::Instant::now() < deadline, "lag {}", lag.get());
        tokio::task::yield_now().await;
    }
    handler.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_publish_breaker_state_is_a_gauge() {
    let bus = Bus::builder()
        .publish_breaker(CircuitBreaker::default())
        .build()
        .unwrap();
    let gauges = bus.metrics().gauges();
    assert_eq!(gauges.len(), 1);
    assert_eq!(gauges[0].name(), BREAKER_STATE);
    assert_eq!(gauges[0].labels()[0].1, "publish");
    assert_eq!(gauges[0].get(), 0.0, "closed");

    let breaker = CircuitBreaker::builder().threshold(1).build().unwrap();
    breaker.export(bus.metrics(), "payments");
    breaker.try_acquire().unwrap().failed();
    let open = bus
        .metrics()
        .gauge(BREAKER_STATE, &[("breaker", "payments")]);
    assert_eq!(open.get(), 2.0, "open after a failure at threshold 1");
}

#[tokio::test]
async fn instrumentation_can_be_turned_off_or_shared() {
    let bus = Bus::builder().instrument(false).build().unwrap();
    let mut sub = bus.subscribe_raw("a").await.unwrap();
    bus.publish(Message::json("a", &1u32).unwrap())
        .await
        .unwrap();
    sub.next().await.unwrap().unwrap().ack().await.unwrap();
    assert!(bus.metrics().all().is_empty());
    assert!(bus.metrics().counters().is_empty());

    let shared = herald::metrics::Metrics::new();
    let one = Bus::builder().metrics(shared.clone()).build().unwrap();
    let two = Bus::builder().metrics(shared.clone()).build().unwrap();
    one.publish(Message::json("a", &1u32).unwrap())
        .await
        .unwrap();
    two.publish(Message::json("a", &1u32).unwrap())
        .await
        .unwrap();
    assert_eq!(shared.get(PUBLISH_SECONDS).unwrap().len(), 2);
}

// Real time: timers measure the wall clock.
#[tokio::test]
async fn the_bus_monitor_reports_a_slow_dispatch_on_the_bus() {
    let bus = Bus::memory();
    let monitor = bus.slo_monitor().unwrap();
    assert_eq!(monitor.slos().len(), 3);
    let mut violations = bus
        .subscribe_raw(herald::slo::VIOLATION_TOPIC)
        .await
        .unwrap();
    let _h = bus
        .handle_command("slow.op", |_req| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Payload::json(&())
        })
        .unwrap();
    for _ in 0..100 {
        bus.call(Message::json("slow.op", &()).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(monitor.check_and_report().await.len(), 1);
    let v: herald::slo::Violation = violations.next().await.unwrap().unwrap().decode().unwrap();
    assert_eq!(v.metric, DISPATCH_SECONDS);
    assert!(v.actual >= 0.002, "{v:?}");
}

#[tokio::test]
async fn failed_publishes_are_counted_by_code() {
    let bus = Bus::memory();
    let refused = bus
        .publish(Message::new("Not A Topic", Payload::null()))
        .await;
    assert_eq!(refused.unwrap_err().code(), ErrorCode::Validation);
    bus.publish(Message::new("fine", Payload::null()))
        .await
        .unwrap();
    let errors = |code| {
        bus.metrics()
            .counter(herald::instrument::PUBLISH_ERRORS, &[("code", code)])
            .get()
    };
    assert_eq!(errors("VALIDATION"), 1);
    assert_eq!(errors("UNAVAILABLE"), 0);
}

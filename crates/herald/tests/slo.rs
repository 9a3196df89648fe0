//! The SLO monitor on tokio's paused clock: detection, thresholds, empty
//! metrics, the per-SLO rate limit, the check loop and publishing on the bus.

use std::time::Duration;

use futures_util::StreamExt;
use herald::metrics::{Metrics, Percentile};
use herald::slo::{Monitor, Slo, Violation, VIOLATION_TOPIC};
use herald::{Bus, StartPosition};

const WINDOW: Duration = Duration::from_secs(10);

fn monitor(metrics: &Metrics) -> Monitor {
    Monitor::builder(metrics.clone())
        .window(WINDOW)
        .build()
        .unwrap()
}

/// Record 100 samples of `value` in metric `name`.
fn fill(metrics: &Metrics, name: &str, value: f64) {
    let m = metrics.register(name);
    for _ in 0..100 {
        m.record(value);
    }
}

/// A monitor publishing on a memory bus, watching `slo`, and a subscriber
/// of its violations.
async fn on_bus(slo: Slo) -> (Metrics, Monitor, herald::Subscription) {
    let bus = Bus::memory();
    let metrics = Metrics::new();
    let mon = Monitor::builder(metrics.clone())
        .bus(bus.clone())
        .build()
        .unwrap();
    mon.add(slo).unwrap();
    let sub = bus
        .subscribe_raw(VIOLATION_TOPIC)
        .start(StartPosition::Latest)
        .await
        .unwrap();
    (metrics, mon, sub)
}

#[tokio::test(start_paused = true)]
async fn a_percentile_over_its_threshold_is_a_violation() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("dispatch", Percentile::P95, 0.001))
        .unwrap();
    fill(&metrics, "dispatch", 0.002);
    let v = mon.check_all();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].metric, "dispatch");
    assert_eq!(v[0].percentile, Percentile::P95);
    assert_eq!((v[0].threshold, v[0].actual), (0.001, 0.002));
}

#[tokio::test(start_paused = true)]
async fn within_the_threshold_nothing_violates() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("dispatch", Percentile::P95, 0.001))
        .unwrap();
    fill(&metrics, "dispatch", 0.001);
    // 4 % of the samples far over: p95 still holds.
    let m = metrics.register("dispatch");
    for _ in 0..4 {
        m.record(1.0);
    }
    assert!(mon.check_all().is_empty(), "at the threshold is within it");
    assert!(mon.check_and_report().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_metric_without_samples_never_violates() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("unknown", Percentile::P50, 0.0)).unwrap();
    mon.add(Slo::new("empty", Percentile::MAX, -1.0)).unwrap();
    metrics.register("empty");
    mon.add(Slo::new("few", Percentile::P50, 0.0).min_samples(10))
        .unwrap();
    let few = metrics.register("few");
    for _ in 0..9 {
        few.record(5.0);
    }
    assert!(mon.check_all().is_empty());
    few.record(5.0);
    assert_eq!(mon.check_all().len(), 1, "judged from the minimum count on");
}

#[tokio::test(start_paused = true)]
async fn one_report_per_slo_per_window_then_again_after_it() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("lag", Percentile::MAX, 10.0)).unwrap();
    fill(&metrics, "lag", 50.0);
    assert_eq!(mon.check_and_report().await.len(), 1);
    for _ in 0..9 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            mon.check_and_report().await.is_empty(),
            "rate-limited within the window"
        );
        assert_eq!(mon.check_all().len(), 1, "yet still broken");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        mon.check_and_report().await.len(),
        1,
        "fires again after the window"
    );
    let reported = metrics.counter(herald::slo::SLO_VIOLATIONS, &[("metric", "lag")]);
    assert_eq!(reported.get(), 2, "each report is counted");
}

#[tokio::test(start_paused = true)]
async fn each_slo_has_its_own_window_and_several_on_one_metric_are_independent() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("handler", Percentile::P50, 0.010))
        .unwrap();
    mon.add(Slo::new("handler", Percentile::P95, 0.050))
        .unwrap();
    let m = metrics.register("handler");
    for _ in 0..90 {
        m.record(0.001);
    }
    for _ in 0..10 {
        m.record(0.100);
    }
    let first = mon.check_and_report().await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].percentile,
        Percentile::P95,
        "p95 breaks, p50 holds"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..100 {
        m.record(0.100);
    }
    let second = mon.check_and_report().await;
    assert_eq!(
        second.len(),
        1,
        "p50 now breaks; p95 is still in its window"
    );
    assert_eq!(second[0].percentile, Percentile::P50);
}

#[tokio::test(start_paused = true)]
async fn several_metrics_are_checked_at_once() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    for (name, threshold) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)] {
        mon.add(Slo::new(name, Percentile::P99, threshold)).unwrap();
    }
    fill(&metrics, "a", 5.0);
    fill(&metrics, "b", 1.0);
    fill(&metrics, "c", 5.0);
    let mut broken: Vec<String> = mon
        .check_and_report()
        .await
        .into_iter()
        .map(|v| v.metric)
        .collect();
    broken.sort();
    assert_eq!(broken, ["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn an_oscillating_metric_fires_is_suppressed_and_fires_again() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("osc", Percentile::MAX, 1.0)).unwrap();
    let m = metrics.register_with("osc", &[], 1);
    let mut fired = Vec::new();
    // Over, under, over, … once a second for 25 s.
    for second in 0..25u64 {
        m.record(if second % 2 == 0 { 2.0 } else { 0.5 });
        if !mon.check_and_report().await.is_empty() {
            fired.push(second);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(fired, [0, 10, 20], "once per window while it oscillates");
}

#[tokio::test(start_paused = true)]
async fn registering_a_metric_again_resets_its_slos_rate_limit() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    mon.add(Slo::new("m", Percentile::MAX, 1.0)).unwrap();
    fill(&metrics, "m", 2.0);
    assert_eq!(mon.check_and_report().await.len(), 1);
    assert!(mon.check_and_report().await.is_empty());
    metrics.register("m");
    assert_eq!(mon.check_and_report().await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn violations_are_published_on_the_bus_for_any_subscriber() {
    let (metrics, mon, mut sub) = on_bus(Slo::new("fanout", Percentile::P95, 0.005)).await;
    fill(&metrics, "fanout", 0.010);
    mon.check_and_report().await;
    let d = sub.next().await.unwrap().unwrap();
    let v: Violation = d.decode().unwrap();
    assert_eq!((v.metric.as_str(), v.actual), ("fanout", 0.010));
    let json: serde_json::Value = d.decode().unwrap();
    for field in ["metric", "percentile", "threshold", "actual", "timestamp"] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
    assert_eq!(json["percentile"], "p95");
}

#[tokio::test(start_paused = true)]
async fn a_failing_publish_never_stops_the_loop() {
    let bus = Bus::memory();
    let metrics = Metrics::new();
    let mon = Monitor::builder(metrics.clone())
        .bus(bus.clone())
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    mon.add(Slo::new("m", Percentile::MAX, 1.0)).unwrap();
    fill(&metrics, "m", 2.0);
    bus.close().await.unwrap();
    assert!(mon.start(Duration::from_secs(1)).unwrap());
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert!(mon.is_running(), "the loop goes on after failed publishes");
    assert_eq!(mon.checks(), 6, "a check at 0 s and each second after");
    mon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_runs_one_loop_and_stop_ends_it() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    assert!(mon.start(Duration::from_secs(5)).unwrap());
    assert!(
        !mon.start(Duration::from_secs(5)).unwrap(),
        "already running"
    );
    assert!(!mon.clone().start(Duration::from_secs(1)).unwrap());
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    assert_eq!(mon.checks(), 5, "one loop: checks at 0, 5, 10, 15 and 20 s");
    mon.stop().await;
    assert!(!mon.is_running());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(mon.checks(), 5, "no checks after stop");
    mon.stop().await;
    assert!(mon.start(Duration::from_secs(5)).unwrap(), "starts again");
    mon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_breach_is_detected_within_one_interval() {
    let (metrics, mon, mut sub) = on_bus(Slo::new("dispatch", Percentile::P95, 0.001)).await;
    fill(&metrics, "dispatch", 0.0005);
    let interval = Duration::from_secs(5);
    mon.start(interval).unwrap();
    tokio::time::sleep(Duration::from_millis(7_300)).await;
    let breach = tokio::time::Instant::now();
    fill(&metrics, "dispatch", 0.002);
    let d = sub.next().await.unwrap().unwrap();
    let detected = breach.elapsed();
    assert!(detected <= interval, "detected after {detected:?}");
    let v: Violation = d.decode().unwrap();
    assert_eq!(v.actual, 0.002);
    mon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_check_slower_than_the_interval_delays_the_next() {
    let metrics = Metrics::new();
    let mon = monitor(&metrics);
    assert!(Monitor::builder(metrics.clone())
        .window(Duration::ZERO)
        .build()
        .is_err());
    assert!(mon.start(Duration::ZERO).is_err());
    assert!(mon.add(Slo::new("m", Percentile::P50, f64::NAN)).is_err());
    assert!(mon.add(Slo::new("", Percentile::P50, 1.0)).is_err());
    // Publishes that wait past the publish timeout (1 s) make each step
    // slower than the 100 ms interval.
    let faults = herald::testing::Faults::new();
    faults.delay_publishes(Some(Duration::from_secs(3)));
    let bus = Bus::new(faults.wrap(herald::memory::MemoryTransport::default()));
    let slow = Monitor::builder(metrics.clone())
        .bus(bus)
        .window(Duration::from_millis(1))
        .build()
        .unwrap();
    slow.add(Slo::new("m", Percentile::MAX, 1.0)).unwrap();
    fill(&metrics, "m", 2.0);
    slow.start(Duration::from_millis(100)).unwrap();
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        slow.checks(),
        6,
        "steps at 0, 1, … 5 s, one after another, not every 100 ms"
    );
    assert_eq!(
        faults.publishes(),
        6,
        "one publish per step, none overlapping"
    );
    slow.stop().await;
}

/// Consumer health (DESIGN.md §9, `HERALD_STALL_AFTER`): a handler that
/// holds a message without settling it for the stall time is `stalled`,
/// which the default SLOs judge a violation at the next check; once it
/// settles, it runs again and the violation is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handler_fails_an_slo_at_the_next_check() {
    use herald::config::DeliveryConfig;
    use herald::health::{MemberState, CONSUMER_STALLED};
    use herald::{Config, Message};

    let delivery = DeliveryConfig::default()
        .stall_after(Duration::from_millis(50))
        .ack_wait(Duration::from_secs(3600));
    let bus = Bus::builder()
        .config(Config::default().delivery(delivery))
        .build()
        .unwrap();
    let monitor = bus.slo_monitor().unwrap();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        bus.handler("jobs")
            .group("workers")
            .start(StartPosition::Earliest)
            .run(move |_| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    bus.publish(Message::json("jobs", &1).unwrap())
        .await
        .unwrap();
    let until = |want: MemberState| {
        let bus = bus.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let members = bus.consumer_health();
                if members.iter().any(|m| m.state == want) {
                    return members;
                }
                assert!(tokio::time::Instant::now() < deadline, "{members:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let stalled = until(MemberState::Stalled).await;
    assert_eq!(stalled[0].group, "workers");
    assert_eq!(stalled[0].in_flight, 1);
    assert!(stalled[0].member.starts_with("handler-"));
    let broken = monitor.check_all();
    assert!(
        broken
            .iter()
            .any(|v| v.metric == CONSUMER_STALLED && v.actual == 1.0),
        "{broken:?}"
    );
    release.notify_one();
    until(MemberState::Running).await;
    assert!(monitor
        .check_all()
        .iter()
        .all(|v| v.metric != CONSUMER_STALLED));
    handler.shutdown(Duration::from_secs(5)).await;
}

//! A check step over 5 ms logs a warning (real time: the step's cost is
//! measured on the wall clock). A binary of its own, for the same reason as
//! `trace_spans.rs`: `tracing` caches callsite interest process-wide.

mod support;

use std::time::Duration;

use herald::metrics::{Metrics, Percentile, DEFAULT_CAPACITY};
use herald::slo::{Monitor, Slo};

#[tokio::test]
async fn a_slow_check_logs_a_warning() {
    let captured = support::Captured::default();
    let _guard = captured.install(tracing::Level::DEBUG);

    // 400 SLOs over 4 full metrics: a step takes well over 5 ms.
    let metrics = Metrics::new();
    let monitor = Monitor::builder(metrics.clone()).build().unwrap();
    for m in 0..4 {
        let metric = metrics.register(&format!("m{m}"));
        for v in 0..DEFAULT_CAPACITY {
            metric.record(v as f64);
        }
        for _ in 0..100 {
            monitor
                .add(Slo::new(format!("m{m}"), Percentile::P99, 1e12))
                .unwrap();
        }
    }
    monitor.start(Duration::from_secs(60)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = captured.text();
        if text.contains("a slow SLO check") {
            assert!(text.contains("WARN"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no warning: {text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        monitor.checks(),
        1,
        "one step so far: the next is a minute away"
    );
    monitor.stop().await;
}

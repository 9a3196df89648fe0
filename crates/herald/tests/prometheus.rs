//! The exposition parses with an independent Prometheus text parser and
//! says what the registry holds.

use herald::metrics::Metrics;
use prometheus_parse::{Scrape, Value};

fn scrape(metrics: &Metrics) -> Scrape {
    let text = herald::prometheus::encode(metrics);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("does not parse: {e}\n{text}"))
}

#[test]
fn histograms_counters_and_gauges_parse_with_their_labels() {
    let metrics = Metrics::new();
    let publish = metrics.register("herald_publish_seconds");
    for v in [0.000_002, 0.000_2, 0.003, 42.0] {
        publish.record(v);
    }
    metrics
        .register_with("herald_handler_seconds", &[("group", "billing")], 100)
        .record(0.01);
    metrics
        .register_with("herald_handler_seconds", &[("group", "shipping-eu")], 100)
        .record(0.02);
    metrics.counter("herald_dead_letters_total", &[]).add(3);
    metrics
        .counter("herald_handler_calls_total", &[("outcome", "acked")])
        .add(7);
    metrics
        .gauge(
            "herald_consumer_lag",
            &[("group", "g"), ("topic", "orders.placed")],
        )
        .set(12.0);
    metrics.register("bench.with-dots").record(1.0);

    let s = scrape(&metrics);
    let find = |name: &str, label: Option<(&str, &str)>| {
        s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in {:#?}", s.samples))
    };

    match &find("herald_publish_seconds", None).value {
        Value::Histogram(buckets) => {
            let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
            assert_eq!(at(1e-6), 0.0);
            assert_eq!(at(2.5e-6), 1.0);
            assert_eq!(at(2.5e-4), 2.0, "cumulative");
            assert_eq!(at(5e-3), 3.0);
            assert_eq!(at(10.0), 3.0);
            assert_eq!(at(f64::INFINITY), 4.0, "+Inf holds everything");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let count = s
        .samples
        .iter()
        .find(|x| x.metric == "herald_publish_seconds_count")
        .map(|x| x.value.clone());
    assert!(
        matches!(count, Some(Value::Untyped(c)) | Some(Value::Counter(c)) if c == 4.0),
        "{count:?}"
    );
    assert!(matches!(
        find("herald_handler_seconds", Some(("group", "shipping-eu"))).value,
        Value::Histogram(_)
    ));
    // OpenMetrics types the family (`herald_…` without `_total`); a
    // classic parser sees the `_total` sample as untyped.
    assert!(matches!(
        find("herald_dead_letters_total", None).value,
        Value::Counter(v) | Value::Untyped(v) if v == 3.0
    ));
    assert!(matches!(
        find("herald_handler_calls_total", Some(("outcome", "acked"))).value,
        Value::Counter(v) | Value::Untyped(v) if v == 7.0
    ));
    assert!(matches!(
        find("herald_consumer_lag", Some(("topic", "orders.placed"))).value,
        Value::Gauge(v) if v == 12.0
    ));
    find("bench_with_dots", None);
    let text = herald::prometheus::encode(&metrics);
    for line in [
        "# TYPE herald_dead_letters counter",
        "# TYPE herald_publish_seconds histogram",
        "# TYPE herald_consumer_lag gauge",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    metrics.counter("c_total", &[("v", "a\"b\\c\nd")]).inc();
    let text = herald::prometheus::encode(&metrics);
    assert!(text.contains(r#"c_total{v="a\"b\\c\nd"} 1"#), "{text}");
}

#[test]
fn an_empty_registry_is_an_empty_exposition() {
    let text = herald::prometheus::encode(&Metrics::new());
    assert_eq!(text, "# EOF\n");
}

//! Consumer health through `herald serve` (`HERALD_STALL_AFTER`): a
//! WebSocket member that holds a delivery without settling it shows as
//! `stalled` in `/v1/groups` and `herald groups`, in `herald_consumer_stalled` on `/metrics`
//! and as a broken SLO on `/v1/slo`, and runs again once it settles.

mod support;

use serde_json::{json, Value};
use support::{get, Served};

/// Poll `GET /v1/groups` until group `group` has a member in `state`.
async fn member_in(s: &Served, group: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, list) = get(&s.url("/v1/groups")).await;
        assert_eq!(status, 200, "{list}");
        let member = list["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == group)
            .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
            .find(|m| m["state"] == state);
        if let Some(m) = member {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn stalled_gauge(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("herald_consumer_stalled{group=\"workers\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_text(s: &Served) -> String {
    reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holding_work_is_stalled_everywhere_an_operator_looks() {
    let s = Served::start(&[("HERALD_STALL_AFTER", "1")]).await;
    let (mut ws, event) = support::holding_member(&s).await;

    let stalled = member_in(&s, "workers", "stalled").await;
    assert_eq!(stalled["in_flight"], 1, "{stalled}");
    assert!(stalled["oldest_in_flight_ms"].as_u64().unwrap() >= 1000);
    assert!(stalled["last_poll"].is_string(), "{stalled}");
    assert_eq!(stalled_gauge(&metrics_text(&s).await), Some(1.0));
    let (_, slo) = get(&s.url("/v1/slo")).await;
    let judged = slo["slos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["metric"] == "herald_consumer_stalled")
        .cloned()
        .expect("the stall SLO is a default one");
    assert_eq!(judged["ok"], false, "{slo}");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("groups")
        .env("HERALD_SERVER", &s.base)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("member subscription-1 stalled: 1 in flight"),
        "{listed}"
    );

    ws.send(json!({"op": "ack", "delivery": event["delivery"]}))
        .await;
    ws.recv_op("settled").await;
    let running = member_in(&s, "workers", "running").await;
    assert_eq!(running["in_flight"], 0, "{running}");
    assert_eq!(stalled_gauge(&metrics_text(&s).await), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_time_out_of_range_is_refused_at_start_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--print-config"])
        .env("HERALD_STALL_AFTER", "0.5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HERALD_STALL_AFTER=0.5") && err.contains("seconds, 1–3600"),
        "{err}"
    );
}

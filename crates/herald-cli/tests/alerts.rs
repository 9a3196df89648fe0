//! The Prometheus alerting rules herald ships (`deploy/prometheus`):
//! `promtool` checks them and runs their unit tests on series shaped like
//! herald's `/metrics`, and a real Prometheus server, started here on
//! loopback with those rules, scrapes a running `herald serve` and fires
//! `HeraldConsumerStalled` when a member holds a delivery without settling
//! it. `promtool` and `prometheus` are Debian's `prometheus` package, which
//! `scripts/test` installs.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, get, Served};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool runs (Debian's prometheus package; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = rules_dir().join("alerts.yml").canonicalize().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian's prometheus package; scripts/test installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// Its alerts now, or `None` while it is not answering yet.
    async fn alerts(&self) -> Option<Vec<Value>> {
        let url = format!("http://127.0.0.1:{}/api/v1/alerts", self.port);
        let body: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        body["data"]["alerts"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_the_stall_alert_on_a_stalled_member() {
    let s = Served::start(&[("HERALD_STALL_AFTER", "1")]).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", s.port));

    let (mut ws, held) = support::holding_member(&s).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let firing = loop {
        let alerts = prometheus.alerts().await.unwrap_or_default();
        let stalled = alerts.iter().find(|a| {
            a["labels"]["alertname"] == "HeraldConsumerStalled" && a["state"] == "firing"
        });
        if let Some(a) = stalled {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no firing stall alert; alerts: {alerts:?}; groups: {}",
            get(&s.url("/v1/groups")).await.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(firing["labels"]["group"], "workers", "{firing}");
    assert_eq!(firing["labels"]["severity"], "critical", "{firing}");

    ws.send(json!({"op": "ack", "delivery": held["delivery"]}))
        .await;
    ws.recv_op("settled").await;
}

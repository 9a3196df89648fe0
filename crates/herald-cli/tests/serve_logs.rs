//! What `herald serve` writes to stderr is what a log platform ingests
//! (issue 22 item 6): `HERALD_LOG_FORMAT=json` gives one JSON object per
//! line, text has no colour codes when stderr is not a terminal, and a
//! format that does not parse is said so, not obeyed silently.

mod support;

use serde_json::Value;
use support::Served;

/// Start a server with `env`, make one request (an access-log line), stop
/// it, and return its log.
async fn log_of(env: &[(&str, &str)]) -> String {
    let mut s = Served::start(env).await;
    let (status, _) = support::get(&s.url("/v1/topics")).await;
    assert_eq!(status, 200);
    assert!(s.terminate().success());
    s.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let log = log_of(&[("HERALD_LOG_FORMAT", "json"), ("HERALD_LOG", "info")]).await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["fields"].is_object(), "{line}");
    }
    let access = lines
        .iter()
        .find(|l| l["target"] == "herald::access")
        .unwrap_or_else(|| panic!("an access line in:\n{log}"));
    assert_eq!(access["fields"]["status"], 200, "{access}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes_and_a_bad_format_is_named() {
    let log = log_of(&[("HERALD_LOG_FORMAT", "xml"), ("HERALD_LOG", "info")]).await;
    assert!(!log.contains('\u{1b}'), "escape codes in:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("HERALD_LOG_FORMAT") && l.contains("xml")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("herald::access")), "{log}");
}

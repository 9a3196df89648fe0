//! The admin page in a real headless browser (Debian's Chromium, driven by
//! playwright-core: `tests/browser/admin.mjs`): it loads, a topic shows its
//! schema and owner and its subject's versions diff, a published event
//! appears in the live tail, a group member's health shows, and the Replay
//! button replays a dead letter.
//! `scripts/test` installs Chromium and the script's npm packages.

mod support;

use serde_json::json;
use support::{get, post, Served, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_tails_and_replays_in_a_browser() {
    let s = Served::start(&[]).await;
    // A subject in two versions, over a topic with events.
    let v1 =
        json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
    let mut v2 = v1.clone();
    v2["properties"]["note"] = json!({"type": "string"});
    for schema in [v1, v2] {
        let body = json!({"subject": "browser.orders.*", "schema": schema, "owner": "billing"});
        let (status, registered) = post(&s.url("/v1/schemas"), &body).await;
        assert_eq!(status, 201, "{registered}");
    }
    let (status, _) = post(
        &s.url("/v1/topics/browser.orders.placed/events"),
        &json!({"payload": {"id": "o-1"}}),
    )
    .await;
    assert_eq!(status, 201);
    // A dead letter to replay: a group member gives up on an event.
    let (status, _) = post(
        &s.url("/v1/topics/browser.dead/events"),
        &json!({"payload": "poison"}),
    )
    .await;
    assert_eq!(status, 201);
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "g",
        "browser.dead",
        json!({"group": "browser", "start": "earliest"}),
    )
    .await;
    let ev = ws.recv_op("event").await;
    ws.send(json!({"op": "term", "delivery": ev["delivery"], "reason": "poison"}))
        .await;
    ws.recv_op("settled").await;
    ws.close().await;
    // A member that stays while the page looks: its health is shown.
    let mut watcher = Ws::connect(&s.ws_url(None)).await;
    watcher
        .subscribe("w", "browser.watch", json!({"group": "watchers"}))
        .await;
    let (_, dead) = get(&s.url("/v1/dead-letters")).await;
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 1);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/admin.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&s.base)
        .output()
        .await
        .expect("node runs (scripts/test installs it and the browser)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.log()
    );
    assert!(stdout.contains("admin page: ok"), "{stdout}");

    // The click replayed it: the dead letter is gone and the topic has it again.
    let (_, dead) = get(&s.url("/v1/dead-letters")).await;
    assert_eq!(dead["dead_letters"], json!([]));
    let (_, page) = get(&s.url("/v1/topics/browser.dead/events")).await;
    assert_eq!(page["events"][1]["payload"], "poison");
    assert!(
        page["events"][1]["headers"]["herald-replay-of"].is_string(),
        "{page}"
    );
    watcher.close().await;
}

//! `herald serve` starting, configuring and stopping: `--print-config`
//! shows each value's origin, `herald.toml` is read and checked, SIGTERM
//! finishes requests in flight and loses nothing acknowledged, and the
//! data is there after a restart.

mod support;

use std::process::Command;

use serde_json::json;
use support::{get, post, Served};

fn herald(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn print_config_names_every_value_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "max_batch = 50\n[pg]\nschema = \"app\"\n",
    )
    .unwrap();
    let out = herald(
        dir.path(),
        &["serve", "--print-config", "--store", "memory://"],
        &[("HERALD_RATE_LIMIT", "77")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_owned()
    };
    assert!(line("HERALD_STORE").starts_with("HERALD_STORE=memory://  # command line"));
    assert!(line("HERALD_RATE_LIMIT").starts_with("HERALD_RATE_LIMIT=77  # environment"));
    assert!(line("HERALD_MAX_BATCH").contains("=50  # file herald.toml"));
    assert!(line("HERALD_PG_SCHEMA").contains("=app  # file"));
    assert!(line("HERALD_LISTEN").starts_with("HERALD_LISTEN=127.0.0.1:7070  # default"));
    let config = herald(
        dir.path(),
        &["config", "--store", "memory://"],
        &[("HERALD_RATE_LIMIT", "77")],
    );
    assert_eq!(
        String::from_utf8(config.stdout).unwrap(),
        text,
        "`herald config` is the same"
    );
}

#[test]
fn bad_settings_are_refused_at_start_naming_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(
        dir.path(),
        &["serve", "--print-config"],
        &[("HERALD_MAX_CONNECTIONS", "0")],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HERALD_MAX_CONNECTIONS=0") && err.contains("expected 1–1000000"),
        "{err}"
    );

    std::fs::write(dir.path().join("herald.toml"), "max_conections = 5\n").unwrap();
    let out = herald(dir.path(), &["serve"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");

    std::fs::write(dir.path().join("herald.toml"), "store = \"redis://x\"\n").unwrap();
    let out = herald(dir.path(), &["serve"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERALD_STORE"));
}

/// `herald config` and `serve --print-config` check the store's settings as
/// start-up would, without opening the store: a bad one fails naming the
/// key, the value and what is allowed.
#[test]
fn config_checks_the_store_s_settings_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["config"][..], &["serve", "--print-config"][..]] {
        let mut args = args.to_vec();
        args.extend(["--store", "sqlite://events.db"]);
        let out = herald(dir.path(), &args, &[("HERALD_DEDUPE_WINDOW", "abc")]);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("HERALD_DEDUPE_WINDOW=abc") && err.contains("seconds, 0–604800"),
            "{args:?}: {err}"
        );
        let out = herald(dir.path(), &args, &[("HERALD_MAX_DELIVER", "0")]);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("HERALD_MAX_DELIVER=0"),
            "{args:?}"
        );
    }
    assert!(
        !dir.path().join("events.db").exists(),
        "checking the settings opened the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_the_data_survives_a_restart() {
    let mut s = Served::start(&[]).await;
    // Publishers running when SIGTERM comes: every publish the server
    // answered 201 is in the store after the restart.
    let url = s.url("/v1/topics/ledger.entries/events");
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut accepted = Vec::new();
                for i in 0..10_000u64 {
                    let n = p * 100_000 + i;
                    match client.post(&url).json(&json!({"payload": n})).send().await {
                        Ok(r) if r.status() == 201 => accepted.push(n),
                        _ => break,
                    }
                }
                accepted
            })
        })
        .collect();
    // Let some work land, then stop the server under load.
    loop {
        let (_, page) = get(&s.url("/v1/topics")).await;
        if page["topics"][0]["last_seq"].as_u64().unwrap_or(0) >= 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let exit = tokio::task::block_in_place(|| s.terminate());
    assert!(
        exit.success(),
        "a clean exit on SIGTERM: {exit:?}\n{}",
        s.log()
    );
    assert!(s.log().contains("herald stopped"), "{}", s.log());
    let mut accepted = Vec::new();
    for p in publishers {
        accepted.extend(p.await.unwrap());
    }
    accepted.sort_unstable();

    s.restart().await;
    let mut stored = Vec::new();
    let mut from = 1;
    loop {
        let (_, page) = get(&s.url(&format!(
            "/v1/topics/ledger.entries/events?from_seq={from}&limit=1000"
        )))
        .await;
        for e in page["events"].as_array().unwrap() {
            stored.push(e["payload"].as_u64().unwrap());
        }
        match page["next_seq"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    stored.sort_unstable();
    assert!(accepted.len() >= 200, "{}", accepted.len());
    let lost: Vec<_> = accepted
        .iter()
        .filter(|n| stored.binary_search(n).is_err())
        .collect();
    assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
    // A publish can land whose answer the client never read (its
    // connection closed by the shutdown): at most one per publisher.
    assert!(
        stored.len() - accepted.len() <= 4,
        "{} stored, {} acknowledged",
        stored.len(),
        accepted.len()
    );
    let (status, _) = post(
        &s.url("/v1/topics/ledger.entries/events"),
        &json!({"payload": 1}),
    )
    .await;
    assert_eq!(status, 201, "serving again");
}

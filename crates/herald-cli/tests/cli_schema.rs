//! `herald schema` against a running server and directly on a store:
//! register, list, show, check (exit 3 when a schema breaks its subject, so
//! CI can gate on it), delete; bad files and unknown subjects are refused
//! with their exit codes and change nothing.

mod support;

use std::process::Output;

use serde_json::{json, Value};
use support::{herald, Served};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &std::path::Path, name: &str, schema: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, schema.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_managed_and_checked_from_the_cli_on_a_server_and_a_store() {
    let s = Served::start(&[]).await;
    let files = tempfile::tempdir().unwrap();
    let v1 = json!({"type": "object", "required": ["id", "total"],
        "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}});
    let mut v2 = v1.clone();
    v2["properties"]["note"] = json!({"type": "string"});
    let mut v3 = v1.clone();
    v3["required"] = json!(["id"]);
    let (v1, v2, v3) = (
        write(files.path(), "v1.json", &v1),
        write(files.path(), "v2.json", &v2),
        write(files.path(), "v3.json", &v3),
    );
    let store_path = files.path().join("direct.db");
    let store = format!("sqlite://{}", store_path.display());
    tokio::task::block_in_place(|| {
        for via in [vec![], vec!["--store", store.as_str()]] {
            let run = |args: &[&str]| {
                let mut all: Vec<&str> = args.to_vec();
                all.extend(&via);
                herald(&all, &s)
            };
            let out = run(&["schema", "register", "orders.*", &v1, "--owner", "billing"]);
            assert!(out.status.success(), "{}", text(&out));
            assert!(text(&out).contains("version 1"), "{}", text(&out));
            let out = run(&["schema", "check", "orders.*", &v2]);
            assert!(out.status.success(), "{}", text(&out));
            let out = run(&["schema", "register", "orders.*", &v2]);
            assert!(text(&out).contains("version 2"), "{}", text(&out));
            // The breaking version: check fails with VALIDATION's exit code
            // and says why; registering it is refused the same way.
            let out = run(&["schema", "check", "orders.*", &v3]);
            assert_eq!(out.status.code(), Some(3), "{}", text(&out));
            assert!(text(&out).contains("`total`"), "{}", text(&out));
            let out = run(&["schema", "register", "orders.*", &v3]);
            assert_eq!(out.status.code(), Some(3), "{}", text(&out));
            let out = run(&[
                "schema",
                "check",
                "orders.*",
                &v3,
                "--compatibility",
                "none",
            ]);
            assert!(out.status.success(), "{}", text(&out));

            let out = run(&["schema", "list", "--json"]);
            let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(listed["owner"], "billing");
            assert_eq!(listed["versions"].as_array().map(Vec::len), Some(2));
            let out = run(&["schema", "show", "orders.*", "--version", "1"]);
            let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(shown["version"], 1);

            // Bad input: exit codes, nothing registered.
            let missing = files.path().join("missing.json");
            let out = run(&["schema", "register", "orders.*", missing.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(3), "{}", text(&out));
            let not_json = write(files.path(), "bad.json", &json!("x"));
            std::fs::write(&not_json, "{ not json").unwrap();
            let out = run(&["schema", "register", "orders.*", &not_json]);
            assert_eq!(out.status.code(), Some(3), "{}", text(&out));
            let out = run(&["schema", "show", "payments.*"]);
            assert_eq!(out.status.code(), Some(4), "{}", text(&out));
            let out = run(&["schema", "list", "--json"]);
            let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(listed["versions"].as_array().map(Vec::len), Some(2));

            let out = run(&["schema", "delete", "orders.*"]);
            assert!(out.status.success(), "{}", text(&out));
            let out = run(&["schema", "delete", "orders.*"]);
            assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        }
    });
}

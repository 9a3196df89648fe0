//! The client commands against a running `herald serve` and directly on
//! its store: publish (arguments, NDJSON on stdin), replay, tail, topics,
//! groups, dlq, call — output and exit codes.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::Served;

fn herald(args: &[&str], server: &Served, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env("HERALD_SERVER", &server.base)
        .current_dir(&server.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_work_against_a_server_and_a_store() {
    let s = Served::start(&[]).await;
    tokio::task::block_in_place(|| {
        let out = herald(
            &["publish", "orders.placed", r#"{"id": 1}"#, "--key", "c-1"],
            &s,
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "orders.placed #1\n");
        let out = herald(&["publish", "orders.placed", r#"{"id": 2}"#], &s, None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "orders.placed #2\n");

        let ndjson: String = (3..=1200).map(|n| format!("{{\"id\": {n}}}\n")).collect();
        let out = herald(&["publish", "orders.placed"], &s, Some(&ndjson));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("published 1198 events"));

        let out = herald(&["replay", "orders.placed", "--from-seq", "1100"], &s, None);
        let replayed = lines(&out);
        assert_eq!(replayed.len(), 101);
        assert_eq!(replayed[0]["seq"], 1100);
        assert_eq!(replayed[100]["payload"]["id"], 1200);

        let out = herald(&["topics", "--json"], &s, None);
        let topics = lines(&out);
        assert_eq!(
            (topics[0]["topic"].as_str(), topics[0]["last_seq"].as_u64()),
            (Some("orders.placed"), Some(1200))
        );

        let out = herald(
            &[
                "tail", "orders.*", "--from", "earliest", "--count", "3", "--json", "--group",
                "audit",
            ],
            &s,
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tailed = lines(&out);
        assert_eq!(
            tailed
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(tailed[0]["key"], "c-1");
        // The group goes on where it stopped.
        let out = herald(
            &[
                "tail", "orders.*", "--count", "1", "--json", "--group", "audit",
            ],
            &s,
            None,
        );
        assert_eq!(lines(&out)[0]["seq"], 4);
        let out = herald(
            &["tail", "orders.*", "--from", "1199", "--count", "1"],
            &s,
            None,
        );
        let pretty = String::from_utf8_lossy(&out.stdout);
        assert!(
            pretty.contains("orders.placed #1199") && pretty.contains(r#"{"id":1199}"#),
            "{pretty}"
        );

        let out = herald(&["groups", "--json"], &s, None);
        let groups = lines(&out);
        assert_eq!(groups[0]["name"], "audit");
        assert_eq!(groups[0]["topics"][0]["acked_through"], 4);

        let out = herald(&["dlq", "list"], &s, None);
        assert!(out.status.success());
        let out = herald(&["dlq", "show", "99"], &s, None);
        assert_eq!(
            out.status.code(),
            Some(4),
            "NOT_FOUND: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = herald(
            &["call", "nobody.home", "1", "--timeout-ms", "200"],
            &s,
            None,
        );
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[NOT_FOUND]"));
        let out = herald(&["publish", "Bad Topic", "1"], &s, None);
        assert_eq!(out.status.code(), Some(3), "VALIDATION");
        let out = herald(&["publish", "a.b", "{not json"], &s, None);
        assert_eq!(out.status.code(), Some(3));

        // The same store opened directly, beside the running server.
        let store = format!("sqlite://{}/herald-data/herald.db", s.dir.display());
        let out = herald(&["topics", "--json", "--store", &store], &s, None);
        assert_eq!(
            lines(&out)[0]["last_seq"],
            1200,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = herald(
            &["publish", "orders.placed", "{}", "--store", &store],
            &s,
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "orders.placed #1201\n"
        );
    });
    let out = tokio::task::block_in_place(|| herald(&["topics"], &s, None));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("orders.placed") && table.contains("1201"),
        "{table}"
    );

    let unreachable = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["topics", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(6), "UNAVAILABLE");
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        "serve", "publish", "tail", "replay", "topics", "groups", "dlq", "call", "token", "backup",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:"),
            "{cmd} --help has no examples:\n{help}"
        );
    }
}

/// `docs/operations.md`'s SQLite backup and restore, as written there:
/// `herald backup`, then the copy put in place of the store's file.
#[test]
fn the_runbooks_sqlite_backup_and_restore_keep_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("HERALD_STORE")
            .output()
            .unwrap()
    };
    for n in 1..=3 {
        let out = run(&[
            "publish",
            "orders.placed",
            &format!("{{\"id\": {n}}}"),
            "--store",
            "sqlite://app.db",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["backup", "--store", "sqlite://app.db", "app-backup.db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = run(&["backup", "--store", "sqlite://app.db", "app-backup.db"]);
    assert_eq!(
        again.status.code(),
        Some(8),
        "DUPLICATE: a backup never overwrites"
    );
    // Restore: with no process on the store, the copy replaces its file.
    std::fs::remove_file(dir.path().join("app.db")).unwrap();
    for stale in ["app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(stale));
    }
    std::fs::copy(dir.path().join("app-backup.db"), dir.path().join("app.db")).unwrap();
    let out = run(&["replay", "orders.placed", "--store", "sqlite://app.db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["payload"]["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let other = run(&["backup", "--store", "postgres://u:secret@h/db", "x.db"]);
    assert_eq!(other.status.code(), Some(3));
    let said = String::from_utf8_lossy(&other.stderr);
    assert!(
        said.contains("pg_dump") && !said.contains("secret"),
        "{said}"
    );
}

/// A Kafka-protocol broker for one test: `HERALD_TEST_KAFKA_BROKERS`, or a
/// `tansu` of its own (in-memory, killed when dropped).
struct Broker {
    servers: String,
    child: Option<std::process::Child>,
}

impl Broker {
    fn start() -> Broker {
        if let Ok(servers) = std::env::var("HERALD_TEST_KAFKA_BROKERS") {
            if !servers.trim().is_empty() {
                return Broker {
                    servers,
                    child: None,
                };
            }
        }
        let port = support::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (cargo install tansu --locked --features libsql,dynostore)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Broker {
            servers: format!("127.0.0.1:{port}"),
            child: Some(child),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn topics_are_made_and_removed_on_kafka_from_the_cli() {
    let broker = Broker::start();
    let store = format!("kafka://{}", broker.servers);
    let environment = format!("cli{:08x}", std::process::id());
    let herald = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .args(["--store", &store])
            .env("HERALD_ENVIRONMENT", &environment)
            .env("HERALD_KAFKA_BATCH_MESSAGES", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = herald(&["topics", "create", "cli.orders", "--partitions", "4"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("created cli.orders (4 partitions)"), "{err}");
    let (code, out, err) = herald(&["publish", "cli.orders", r#"{"id": 1}"#]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("cli.orders #"), "{out}");
    let (code, out, err) = herald(&["topics", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let orders = listed
        .iter()
        .find(|t| t["topic"] == "cli.orders")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(orders["partitions"], 4);

    // Issue 22 item 13: a count is raised, never lowered.
    let (code, _, err) = herald(&["topics", "partitions", "cli.orders", "2"]);
    assert_eq!(code, Some(3), "VALIDATION: {err}");
    assert!(err.contains("cannot take partitions away"), "{err}");
    let (code, _, err) = herald(&["topics", "partitions", "cli.orders", "4"]);
    assert_eq!(code, Some(0), "the same count is nothing to do: {err}");
    let (code, _, err) = herald(&["topics", "partitions", "cli.none", "4"]);
    assert_eq!(code, Some(4), "NOT_FOUND: {err}");
    let (code, _, err) = herald(&["topics", "partitions", "cli.orders", "6"]);
    if broker.child.is_some() {
        // tansu 0.6 has no CreatePartitions: the broker's refusal is named.
        assert_ne!(code, Some(0), "{err}");
        assert!(err.contains("add partitions to"), "{err}");
    } else {
        assert_eq!(code, Some(0), "{err}");
        let (_, out, _) = herald(&["topics", "--json"]);
        assert!(out.contains(r#""partitions":6"#), "{out}");
    }

    let (code, _, err) = herald(&["topics", "delete", "cli.orders"]);
    assert_eq!(code, Some(0), "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, _, err) = herald(&["topics", "delete", "cli.orders"]);
        if code == Some(4) {
            assert!(err.contains("NOT_FOUND"), "{err}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still there: {err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _, err) = herald(&["topics", "create", "cli.x", "--partitions", "0"]);
    assert_eq!(code, Some(3), "VALIDATION: {err}");

    // Other stores make topics as they are published to.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["topics", "create", "cli.orders", "--store"])
        .arg(format!("sqlite://{}", dir.path().join("h.db").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka://"));
}

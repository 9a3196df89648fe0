//! `herald chaos`, the fault harness, in its short form: publishers and
//! group members killed at seeded random moments — tasks on the memory
//! store, processes (`kill -9`, or paused past their ack wait) on SQLite
//! and NATS — and on a PostgreSQL server of the run's own its crashes
//! and network faults too; the history checked. A
//! run exits 0 only when the checker finds nothing lost, duplicated in
//! the store, out of order or unexplained; the same seed gives the same
//! fault schedule.

use std::process::Command;

use serde_json::Value;

fn chaos(store: &str, seed: u64, dir: &std::path::Path) -> Value {
    chaos_for(&["--store", store], seed, (8, 4), dir)
}

/// A run on `on` (`--store URL` or `--server KIND`) of `faults` faults in
/// `seconds` seconds.
fn chaos_for(
    on: &[&str],
    seed: u64,
    (faults, seconds): (u32, u32),
    dir: &std::path::Path,
) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("chaos")
        .args(on)
        .args(["--seed", &seed.to_string()])
        .args([
            "--faults",
            &faults.to_string(),
            "--duration",
            &seconds.to_string(),
        ])
        .args(["--json", "--dir"])
        .arg(dir)
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success(),
        "violations (seed {seed}): {:#}",
        run["report"]["violations"]
    );
    run
}

fn assert_clean(run: &Value) {
    let report = &run["report"];
    assert_eq!(run["drained"], true, "{run:#}");
    assert_eq!(report["violations"], serde_json::json!([]));
    assert!(run["schedule"].as_array().unwrap().len() >= 8);
    assert!(report["published"].as_u64().unwrap() > 50, "{report:#}");
    assert!(report["acked"].as_u64().unwrap() > 50, "{report:#}");
    let recovered = report["recovery_us"].as_array().unwrap();
    assert!(
        recovered.iter().all(Value::is_u64),
        "every fault recovered: {recovered:?}"
    );
}

#[test]
fn the_memory_store_survives_killed_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let run = chaos("memory://", 3, dir.path());
    assert_clean(&run);
    let again = chaos("memory://", 3, dir.path());
    assert_eq!(
        run["schedule"], again["schedule"],
        "a seed replays its faults"
    );
}

#[test]
fn sqlite_survives_publishers_and_members_killed_with_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("chaos.db").display());
    let run = chaos(&store, 11, dir.path());
    assert_clean(&run);
}

/// Seed 5 found NATS groups handing a key's later events out while its
/// earlier ones, held by a member killed with them, waited out their ack
/// wait (348 events out of order); a part's new reader now waits for them
/// first.
#[test]
fn nats_keeps_per_key_order_when_a_member_holding_a_part_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let store = format!("{url}?prefix=chaos{:08x}", fastrand::u32(..));
    let kills = "--kinds=kill-publisher,kill-member,kill-holder";
    let run = chaos_for(&["--store", &store, kills], 5, (10, 8), dir.path());
    assert_clean(&run);
}

/// On a PostgreSQL server of the run's own, behind the run's proxy: the
/// server crashed and restarted, latency, dropped connections, a
/// blackhole and half-open sockets besides the process faults. Seed 1
/// found an ack answered `Ok` after its event had gone to another member
/// (with 200 ms of latency); such an ack now fails.
#[test]
fn postgres_survives_its_server_crashing_and_network_faults() {
    let dir = tempfile::tempdir().unwrap();
    let run = chaos_for(&["--server", "postgres"], 1, (10, 10), dir.path());
    assert_clean(&run);
    let kinds: std::collections::HashSet<&str> = run["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for kind in ["restart_store", "latency"] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
}

/// A JetStream cluster of three nats-servers of the run's own, streams
/// replicated three times: the workload topic's stream leader killed, then
/// a follower, each started again, while the group works. Nothing acked is
/// lost, nothing is stored twice, the group drains and recovers after
/// each. Per-key order is not asserted yet: a member's connection lost to
/// a killed node leaves the deliveries it had pulled to be redelivered
/// after later events of their key (seed 1: 9 events; the same happens
/// with dropped connections on one server), an open finding of issue 24.
#[test]
fn a_nats_cluster_loses_nothing_when_its_stream_leader_and_a_follower_die() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["chaos", "--server", "nats-cluster", "--seed", "1"])
        .args(["--kinds", "kill-stream-leader,kill-stream-follower"])
        .args(["--faults", "2", "--duration", "10", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let report = &run["report"];
    assert_eq!(run["drained"], true, "{run:#}");
    let mut kinds: Vec<&str> = run["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["kill_stream_follower", "kill_stream_leader"]);
    // The nodes killed were the stream's leader and a follower, as the
    // cluster reported them at the time.
    let faults = std::fs::read_to_string(dir.path().join("harness.jsonl")).unwrap();
    for who in ["(the stream's leader)", "(a follower)"] {
        assert!(faults.contains(who), "{who} in {faults}");
    }
    let others: Vec<&Value> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["property"] != "per-key order")
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    assert!(report["acked"].as_u64().unwrap() > 50, "{report:#}");
    let recovered = report["recovery_us"].as_array().unwrap();
    assert!(recovered.iter().all(Value::is_u64), "{recovered:?}");
}

/// Bad input is refused before anything runs: an unknown store, and each
/// bound (faults, duration, processes), with the usage error's exit code
/// or `VALIDATION`'s, and no history written.
#[test]
fn bad_input_is_refused_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (args, code) in [
        (&["--store", "bogus://x"][..], 3),
        (&["--server", "mysql"][..], 2),
        (
            &["--server", "nats", "--store", "nats://127.0.0.1:4222"][..],
            2,
        ),
        (&["--kinds", "meteor"][..], 2),
        (&["--kinds", "restart-store"][..], 3),
        (&["--faults", "10001"][..], 2),
        (&["--duration", "0"][..], 2),
        (&["--duration", "3601"][..], 2),
        (&["--publishers", "0"][..], 2),
        (&["--members", "65"][..], 2),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("chaos")
            .args(args)
            .arg("--dir")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let histories = std::fs::read_dir(dir.path().join("run"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(histories, 0, "nothing ran");
}

//! What the Kafka tests share: a broker, and a fresh environment per bus so
//! tests run in parallel against one broker.
//!
//! `HERALD_TEST_KAFKA_BROKERS` names a Kafka cluster to test against
//! (comma-separated `host:port`). Without it, the first test of a test
//! binary starts a `tansu` broker (a Kafka-protocol broker, `cargo install
//! tansu`) on a free loopback port with in-memory storage; it is killed
//! when the test binary exits.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use herald_kafka::KafkaConfig;

/// The brokers the tests use.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| match std::env::var("HERALD_TEST_KAFKA_BROKERS") {
            Ok(b) if !b.trim().is_empty() => b,
            _ => start_tansu(),
        })
        .clone()
}

/// Whether the tests run against a `tansu` broker of their own.
pub fn on_tansu() -> bool {
    brokers();
    std::env::var("HERALD_TEST_KAFKA_BROKERS").map_or(true, |b| b.trim().is_empty())
}

/// Records per producer batch: 1 on tansu, which cannot serve a fetch that
/// starts inside a batch; librdkafka's default on Kafka.
pub fn batch_messages() -> u32 {
    if on_tansu() {
        1
    } else {
        herald_kafka::config::DEFAULT_BATCH_MESSAGES
    }
}

/// A configuration in an environment no other test uses.
pub fn fresh_config() -> KafkaConfig {
    KafkaConfig::new(brokers())
        .environment(format!("t{:012x}", fastrand::u64(..1 << 48)))
        .batch_messages(batch_messages())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Start `tansu broker` with `storage` in `dir` on `port`, killed when this
/// process exits (it is spawned from a thread that lives as long), and
/// wait until it accepts connections. Returns its PID.
pub fn spawn_tansu(port: u16, storage: &str, dir: &std::path::Path) -> u32 {
    let url = format!("tcp://127.0.0.1:{port}");
    let (tx, rx) = std::sync::mpsc::channel();
    let (storage, dir) = (storage.to_owned(), dir.to_owned());
    std::thread::spawn(move || {
        let mut cmd = Command::new("tansu");
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", &storage])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the
        // broker when the thread that spawned it (this one, parked for the
        // life of the process) goes away.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start tansu (install it with `cargo install tansu --locked --features libsql,dynostore`, or set HERALD_TEST_KAFKA_BROKERS)");
        tx.send(child.id()).unwrap();
        let mut child = child;
        let _ = child.wait();
    });
    let pid = rx.recv().expect("tansu started");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    pid
}

fn start_tansu() -> String {
    let port = free_port();
    let dir = std::env::temp_dir();
    spawn_tansu(port, "memory://tansu/", &dir);
    format!("127.0.0.1:{port}")
}

/// Create Kafka topic `name` (one partition) with a plain admin client, as
/// a team's own tooling would.
pub async fn create_topic(name: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(-1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
    // Wait for its leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    loop {
        let md = rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            Some(name),
            Duration::from_secs(5),
        )
        .unwrap();
        let ready = md
            .topics()
            .iter()
            .any(|t| t.name() == name && t.partitions().iter().any(|p| p.leader() >= 0));
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} has no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

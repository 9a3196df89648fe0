//! A JetStream cluster of the run's own: three nats-servers on loopback,
//! routed to each other, each with its store in its own temporary
//! directory, so a run can kill a stream's leader or a follower and start
//! it again. herald's streams on it are replicated three times
//! (`HERALD_NATS_REPLICAS=3`, which `herald chaos --server nats-cluster`
//! sets).
//!
//! Owns the nodes and finding a stream's leader (from a node's monitoring
//! endpoint, `/jsz`). The machine's shared server is never touched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::{Error, Result};

use crate::server::{free_port, spawn_for_life};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// How long the cluster may take to elect its JetStream meta leader.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    name: String,
    client: u16,
    route: u16,
    monitor: u16,
    child: Option<Child>,
}

/// Three nats-servers of the run's own.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn internal(what: impl std::fmt::Display) -> Error {
    Error::internal(format!("the run's NATS cluster: {what}"))
}

impl NatsCluster {
    /// Start three nodes and wait until JetStream has a meta leader.
    pub fn start() -> Result<NatsCluster> {
        let dir = tempfile::tempdir().map_err(internal)?;
        let mut nodes = Vec::new();
        for i in 0..NODES {
            nodes.push(Node {
                name: format!("chaos-n{i}-{}", std::process::id()),
                client: free_port()?,
                route: free_port()?,
                monitor: free_port()?,
                child: None,
            });
        }
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..NODES {
            cluster.start_node(i)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while cluster.meta_leader().is_none() {
            if Instant::now() > deadline {
                return Err(internal("no JetStream meta leader was elected"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// The URLs herald connects to, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start node `i` (again) on its ports and store.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.route))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let bin =
            crate::server::which("nats-server").unwrap_or_else(|| "/usr/sbin/nats-server".into());
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &node.client.to_string()])
            .args(["-n", &node.name, "-js", "-sd"])
            .arg(&store)
            .args(["-m", &node.monitor.to_string()])
            .args(["--cluster_name", "herald-chaos"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.route)])
            .args(["--routes", &routes])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_for_life(cmd).map_err(internal)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", node.client)).is_err() {
            if Instant::now() > deadline {
                return Err(internal(format!("{} did not listen", node.name)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Kill node `i` (SIGKILL) and wait for it to exit.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the node leading the stream whose name ends with
    /// `suffix`, as a live node's `/jsz` reports it.
    pub fn stream_leader(&self, suffix: &str) -> Option<usize> {
        let leader = self.live_jsz("/jsz?streams=true").and_then(|jsz| {
            jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned))
        })?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// The JetStream meta leader's name, once there is one.
    fn meta_leader(&self) -> Option<String> {
        let jsz = self.live_jsz("/jsz")?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// `path` of the first live node's monitoring endpoint, as JSON.
    fn live_jsz(&self, path: &str) -> Option<serde_json::Value> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| http_get_json(n.monitor, path))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// GET `path` from loopback `port` (HTTP/1.0, the whole answer read) as
/// JSON.
fn http_get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let at = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    serde_json::from_slice(&answer[at + 4..]).ok()
}

//! A nats-server of the test's own, for fault tests: JetStream on its own
//! port on 127.0.0.1 with its store in a temporary directory, killed and
//! restarted by its own PID, removed when dropped. The machine's shared
//! server is never touched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnServer {
    /// Start a server on a free port with an empty store. A port found
    /// free may be taken by another test's server before this one binds
    /// it (the port then answers with the other's name): then it starts
    /// again on another.
    pub fn start() -> OwnServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = OwnServer {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..10 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if server.try_run() {
                return server;
            }
        }
        panic!("nats-server did not come up on a port of its own");
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        assert!(self.try_run(), "nats-server did not come up");
    }

    /// Start the server on `self.port`; whether it is up (not whether
    /// something answers on the port: a server that could not bind it
    /// has exited).
    fn try_run(&mut self) -> bool {
        let mut child = Command::new("/usr/sbin/nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-n",
                &self.name(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            match self.answering() {
                // Another server answers on the port: this one cannot
                // bind it.
                Some(name) if name != self.name() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                Some(_) => break,
                None => {}
            }
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    /// The `-n` name each server of this test is started with.
    fn name(&self) -> String {
        format!("herald-test-{}-{}", std::process::id(), self.port)
    }

    /// The name of the server answering on the port, from its INFO line.
    fn answering(&self) -> Option<String> {
        use std::io::{BufRead, BufReader};
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut info = String::new();
        BufReader::new(stream).read_line(&mut info).ok()?;
        let json = info.strip_prefix("INFO ")?;
        let info: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
        Some(info.get("server_name")?.as_str()?.to_owned())
    }

    /// Kill the server (SIGKILL, by its PID) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

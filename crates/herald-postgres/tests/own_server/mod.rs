//! A PostgreSQL server of the test's own, for fault tests: initdb into a
//! temporary directory, its own port on 127.0.0.1, run as the `postgres`
//! user (the server refuses root), crashed and restarted by its own PID,
//! removed when dropped. The machine's shared server is never touched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    child: Option<Child>,
}

impl OwnServer {
    /// Create a cluster and start it.
    pub fn start() -> OwnServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let uid = id("-u");
        let gid = id("-g");
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("chown")
            .arg(format!("{uid}:{gid}"))
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown the server's directory");
        let data = dir.path().join("data");
        let out = Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = OwnServer {
            dir,
            bin,
            port,
            uid,
            gid,
            child: None,
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Kill the server as a crash would (SIGQUIT to the postmaster: an
    /// immediate shutdown, recovery from the WAL on restart), and wait for
    /// it to exit.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and data.
    pub fn restart(&mut self) {
        self.crash();
        self.run();
    }

    fn run(&mut self) {
        let child = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=100",
            ])
            .uid(self.uid)
            .gid(self.gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        wait_ready(&self.bin, self.dir.path(), self.port);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.crash();
    }
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the postgres user exists")
}

/// Poll `pg_isready` until the server accepts connections (startup
/// includes WAL recovery after a crash).
fn wait_ready(bin: &Path, socket_dir: &Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the test's server at {} did not start",
            socket_dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

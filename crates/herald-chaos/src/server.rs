//! Store servers of a run's own, so a run can crash and restart them:
//! PostgreSQL (`initdb` into a temporary directory, run as the `postgres`
//! user, which the server requires), a nats-server with JetStream, or a
//! `tansu` broker on SQLite storage, each on a free loopback port with its
//! data in a temporary directory, killed and started again by its own PID,
//! removed when dropped. The machine's shared servers are never touched.
//!
//! Owns starting, crashing and restarting them. herald reaches one through
//! the run's [`proxy`](crate::proxy), so the URL a run's roles use names
//! the proxy's port ([`OwnServer::url`]); Kafka clients then meet the
//! broker's advertised address, which is the proxy's too.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::{Error, Result};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Postgres,
    Nats,
    Kafka,
    /// Three nats-servers in a JetStream cluster
    /// ([`NatsCluster`](crate::cluster::NatsCluster)), streams replicated
    /// three times.
    NatsCluster,
}

/// A running server of the run's own.
pub struct OwnServer {
    kind: Kind,
    dir: tempfile::TempDir,
    /// The port it listens on.
    port: u16,
    /// The port herald connects to (the proxy's).
    public_port: u16,
    child: Option<Child>,
}

/// How long a server may take to come up (PostgreSQL replays its WAL
/// after a crash).
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::internal(format!("{what}: {e}"))
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io("a free port"))?
        .port())
}

impl OwnServer {
    /// Make a server of `kind` and start it; herald will reach it on
    /// `public_port` (where the proxy listens).
    pub fn start(kind: Kind, public_port: u16) -> Result<OwnServer> {
        if kind == Kind::NatsCluster {
            return Err(Error::internal("a cluster is started as a NatsCluster"));
        }
        let dir = tempfile::tempdir().map_err(io("a temporary directory"))?;
        let mut server = OwnServer {
            kind,
            dir,
            port: free_port()?,
            public_port,
            child: None,
        };
        if kind == Kind::Postgres {
            server.initdb()?;
        }
        server.run()?;
        Ok(server)
    }

    /// The store URL herald uses (through the proxy).
    pub fn url(&self) -> String {
        let port = self.public_port;
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            Kind::Kafka => format!("kafka://127.0.0.1:{port}"),
            Kind::Nats | Kind::NatsCluster => format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Where the server itself listens (the proxy's upstream).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kill the server as a crash does (SIGKILL; PostgreSQL's postmaster
    /// gets SIGQUIT, an immediate shutdown that leaves recovery to the
    /// WAL, since a SIGKILLed postmaster leaves its children holding the
    /// data directory), and wait for it to exit.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signal = match self.kind {
                Kind::Postgres => libc::SIGQUIT,
                _ => libc::SIGKILL,
            };
            // SAFETY: kill(2) on the PID of a child this value owns and
            // has not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    /// Crash it and start it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.crash();
        self.run()
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = Command::new(pg_bin("initdb")?);
        if let Some((uid, gid)) = postgres_user()? {
            let status = Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(self.dir.path())
                .status()
                .map_err(io("chown"))?;
            if !status.success() {
                return Err(Error::internal("chown of the server's directory failed"));
            }
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(self.dir.path().join("data"))
            .output()
            .map_err(io("initdb"))?;
        if !out.status.success() {
            return Err(Error::internal(format!(
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    fn command(&self) -> Result<Command> {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut cmd = Command::new(pg_bin("postgres")?);
                cmd.arg("-D")
                    .arg(self.dir.path().join("data"))
                    .args(["-p", &port, "-k"])
                    .arg(self.dir.path())
                    .args(["-c", "listen_addresses=127.0.0.1"]);
                if let Some((uid, gid)) = postgres_user()? {
                    cmd.uid(uid).gid(gid);
                }
                cmd
            }
            Kind::Nats | Kind::NatsCluster => {
                let bin = which("nats-server").unwrap_or_else(|| "/usr/sbin/nats-server".into());
                let mut cmd = Command::new(bin);
                cmd.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.dir.path());
                cmd
            }
            Kind::Kafka => {
                let mut cmd = Command::new("tansu");
                cmd.args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{port}"),
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{}", self.public_port),
                    "--storage-engine",
                    "sqlite://tansu.db",
                ])
                .current_dir(self.dir.path());
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the server dies with the
        // harness instead of outliving a harness killed mid-run (the
        // signal comes when the thread that spawned it ends: `spawn`'s,
        // which lives as long as the process).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn run(&mut self) -> Result<()> {
        let what = format!("{:?} server", self.kind);
        let mut child = spawn_for_life(self.command()?).map_err(io(&what))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::internal(format!(
                    "the run's {what} exited at start ({status}); is its port {} free?",
                    self.port
                )));
            }
            if self.ready() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::internal(format!(
                    "the run's {what} did not come up on port {} within {START_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it serves: PostgreSQL by `pg_isready` (it listens during
    /// recovery), the others once they accept a connection.
    fn ready(&self) -> bool {
        match self.kind {
            Kind::Postgres => pg_bin("pg_isready").is_ok_and(|bin| {
                Command::new(bin)
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                    .status()
                    .is_ok_and(|s| s.success())
            }),
            _ => std::net::TcpStream::connect(self.addr()).is_ok(),
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Spawn `cmd` from a thread that lives as long as the process, so a
/// server's parent-death signal comes when the harness ends, not when a
/// blocking-pool thread that happened to start it retires.
pub(crate) fn spawn_for_life(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// A PostgreSQL program: from `pg_config --bindir`, else the newest
/// version under /usr/lib/postgresql, else the PATH.
fn pg_bin(name: &str) -> Result<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dir| {
            dir.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .max()
        });
    from_config
        .into_iter()
        .chain(debian)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .or_else(|| which(name))
        .ok_or_else(|| Error::internal(format!("PostgreSQL's `{name}` is not installed")))
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| Path::new(p).exists())
    })
}

/// Who PostgreSQL runs as: the `postgres` user's uid and gid when this is
/// root (the server refuses to run as root), else `None` (as this user).
fn postgres_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(io("id"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| Error::internal("a `postgres` user is needed to run PostgreSQL"))
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

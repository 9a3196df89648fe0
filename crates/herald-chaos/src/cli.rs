//! `herald chaos`: a fault run against any store (`--store URL`), and the
//! hidden `herald chaos worker` each role's process runs as.
//!
//! Owns the command line and the run's printed report: the seed, the
//! fault schedule, the counts, and each violation with the history that
//! shows it. A run is [`run`](crate::run)'s.

use std::path::PathBuf;
use std::time::Duration;

use crate::run::{self, Plan, Run};
use crate::workload::{Recorder, Role};

/// Options of `herald chaos`.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  herald chaos --store sqlite://chaos.db --seed 7 --faults 20
  herald chaos --server postgres --faults 30 --duration 30
  herald chaos --store nats://127.0.0.1:4222 --duration 60 --json > run.json"
)]
pub struct Args {
    #[command(subcommand)]
    worker: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// One role of a run (started by `herald chaos` itself).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// What to run.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The store: memory:// (roles as tasks), sqlite://PATH, postgres://…,
    /// nats://…, kafka://… (roles as processes of their own).
    #[arg(long, default_value = "memory://")]
    store: String,
    /// Run on a store server of the run's own instead (postgres: initdb
    /// and postgres; nats: nats-server; kafka: tansu), on a free loopback
    /// port behind the run's proxy, which adds store crashes and network
    /// faults (latency, dropped connections, blackholes, half-open
    /// sockets) to the process faults.
    /// nats-cluster: three nats-servers in a JetStream cluster, streams
    /// replicated three times, whose stream leader and followers are
    /// killed.
    #[arg(long, value_enum, conflicts_with = "store")]
    server: Option<crate::server::Kind>,
    /// The seed of the fault schedule and the workload (default: random,
    /// printed, so a failing run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault moments, at most 10,000: kill -9 of a publisher, a member or
    /// a member holding deliveries, a member paused past its ack wait
    /// (not on memory://), and with --server the store's crash and
    /// network faults.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    faults: u32,
    /// Only these fault kinds, comma-separated (default: every kind the
    /// run can inject).
    #[arg(long, value_enum, value_delimiter = ',')]
    kinds: Vec<crate::run::FaultKind>,
    /// Seconds the publishers publish (1–3600); the faults fall in this
    /// window.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Publisher processes (1–64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    publishers: u32,
    /// Group member processes (1–64).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    members: u32,
    /// Where the histories go (default: a new temporary directory, kept
    /// when the run finds a violation).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the run (schedule, counts, violations) as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One role's options.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    role: Role,
    #[arg(long)]
    name: String,
    #[arg(long)]
    incarnation: u32,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    history: PathBuf,
    #[arg(long)]
    epoch_us: u64,
    #[arg(long)]
    stop: PathBuf,
    #[arg(long)]
    store: String,
}

/// What `herald chaos` sets in its environment before anything runs (its
/// workers inherit it): three replicas of each stream on a cluster of the
/// run's own, unless `HERALD_NATS_REPLICAS` says otherwise.
pub fn environment(args: &Args) {
    if args.run.server == Some(crate::server::Kind::NatsCluster)
        && std::env::var_os("HERALD_NATS_REPLICAS").is_none()
    {
        std::env::set_var("HERALD_NATS_REPLICAS", "3");
    }
}

/// Run `herald chaos`: `Ok(false)` when the run found a violation (it is
/// printed).
pub async fn main(args: Args) -> herald::Result<bool> {
    match args.worker {
        Some(Sub::Worker(w)) => worker(w).await.map(|()| true),
        None => run_and_report(args.run).await,
    }
}

async fn worker(w: WorkerArgs) -> herald::Result<()> {
    let bus = run::open(&w.store).await?;
    let rec = Recorder::open(&w.history, w.name, w.epoch_us)
        .map_err(|e| herald::Error::internal(format!("{}: {e}", w.history.display())))?;
    run::role_main(&bus, &rec, w.role, w.seed, w.incarnation, &w.stop).await;
    bus.close().await
}

async fn run_and_report(args: RunArgs) -> herald::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let temp = match &args.dir {
        Some(_) => None,
        None => {
            Some(std::env::temp_dir().join(format!("herald-chaos-{seed}-{}", std::process::id())))
        }
    };
    let dir = args.dir.clone().or(temp.clone()).unwrap_or_default();
    let worker = if args.store.starts_with("memory:") && args.server.is_none() {
        None
    } else {
        let exe = std::env::current_exe()
            .map_err(|e| herald::Error::internal(format!("this executable: {e}")))?;
        Some(vec![
            exe.to_string_lossy().into_owned(),
            "chaos".into(),
            "worker".into(),
        ])
    };
    let plan = Plan {
        store: args.store,
        server: args.server,
        seed,
        faults: args.faults,
        duration: Duration::from_secs(args.duration),
        publishers: args.publishers,
        members: args.members,
        kinds: args.kinds,
        dir: dir.clone(),
        worker,
    };
    let run = run::run(&plan).await?;
    let passed = run.report.violations.is_empty() && run.drained;
    if args.json {
        let text =
            serde_json::to_string(&run).map_err(|e| herald::Error::internal(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", summary(&run));
    }
    match (&temp, passed) {
        (Some(t), true) => {
            let _ = std::fs::remove_dir_all(t);
        }
        _ => eprintln!("chaos: histories kept in {}", dir.display()),
    }
    Ok(passed)
}

/// The most violations the text shows.
const MAX_SHOWN: usize = 10;

/// The run as text: seed, schedule, counts, then each violation.
pub fn summary(run: &Run) -> String {
    let r = &run.report;
    let mut recovery: Vec<u64> = r.recovery_us.iter().flatten().map(|us| us / 1000).collect();
    recovery.sort_unstable();
    let p50 = recovery.get(recovery.len() / 2).copied();
    let max = recovery.last().copied();
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
    let mut out = format!(
        "chaos: store {}, seed {}, {} faults\n",
        run.store,
        run.seed,
        run.schedule.len()
    );
    for f in &run.schedule {
        out.push_str(&format!("  {f}\n"));
    }
    out.push_str(&format!(
        "operations {}, published {}, acked {}, lost {}, duplicates {}, order violations {}, unknown {} present / {} absent, dead letters {}, recovered {}/{} (p50 {}, max {}), drained {}\n",
        r.operations,
        r.published,
        r.acked,
        r.lost(),
        r.duplicates,
        r.of(crate::check::ORDER),
        r.unknown_present,
        r.unknown_absent,
        r.dead_letters,
        recovery.len(),
        r.recovery_us.len(),
        ms(p50),
        ms(max),
        run.drained,
    ));
    for v in r.violations.iter().take(MAX_SHOWN) {
        out.push_str(&format!("VIOLATION (seed {}) {v}", run.seed));
    }
    if r.violations.len() > MAX_SHOWN {
        out.push_str(&format!(
            "… and {} more violations (--json lists them all)\n",
            r.violations.len() - MAX_SHOWN
        ));
    }
    out
}

//! A fault run: the workload's roles started as processes of their own
//! (on a store that lives in one process, as tasks), process faults at
//! moments drawn from a seeded RNG, then the group drained, the histories
//! merged, the store read and the history checked.
//!
//! Owns the plan of a run ([`Plan`]), its fault schedule ([`schedule`]:
//! the same seed gives the same faults at the same moments) and its
//! result ([`Run`]). A role's work is [`workload`](crate::workload)'s;
//! what the history proves, [`check`](crate::check)'s.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::memory::{MemoryConfig, MemoryTransport};
use herald::transport::MAX_REPLAY_PAGE;
use herald::{Bus, Config, StartPosition};
use serde::Serialize;

use crate::check::{self, Report, Spec, Stored, StoredDeadLetter, StoredEvent};
use crate::cluster::{NatsCluster, NODES};
use crate::history::{self, Outcome, Record};
use crate::proxy::{Mode, Proxy};
use crate::server::{Kind as ServerKind, OwnServer};
use crate::workload::{self, now_us, Recorder, Role, ACK_WAIT, EFFECTS, GROUP, MAX_DELIVER, TOPIC};

/// How long the group may take to settle everything once publishing
/// stops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest one look at the group's standing may take while draining.
const SETTLED_WAIT: Duration = Duration::from_secs(10);
/// How often the run looks for roles that ended on their own.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// The longest a killed role stays down before it is started again.
const MAX_DOWN: Duration = Duration::from_millis(500);

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store's URL (`memory://`, `sqlite://PATH`, …); unused when
    /// [`server`](Plan::server) is set.
    pub store: String,
    /// A store server of the run's own to run on, behind the run's proxy,
    /// which adds store restarts and network faults to the schedule.
    pub server: Option<ServerKind>,
    pub seed: u64,
    /// Fault moments in the run.
    pub faults: u32,
    /// How long publishers publish (faults fall in this window).
    pub duration: Duration,
    pub publishers: u32,
    pub members: u32,
    /// The fault kinds to draw from (empty: every kind the run can
    /// inject).
    pub kinds: Vec<FaultKind>,
    /// Where the histories go.
    pub dir: PathBuf,
    /// How a role is started: `None` runs roles as tasks of this process
    /// (the memory store), `Some(argv)` as processes: `argv` followed by
    /// the role's [`WorkerArgs`](crate::WorkerArgs).
    pub worker: Option<Vec<String>>,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a publisher (a task aborted on the memory store).
    KillPublisher,
    /// `kill -9` of a group member.
    KillMember,
    /// `kill -9` of a member holding deliveries it has not settled (as its
    /// history shows; any member when none does).
    KillHolder,
    /// A member stopped (SIGSTOP) past the group's ack wait, then resumed
    /// (SIGCONT): a process paused (a stall, a suspended VM) whose clock
    /// jumps when it runs again, with its leases run out meanwhile.
    PauseMember,
    /// The store's server crashed (SIGKILL; SIGQUIT for PostgreSQL) and
    /// started again on the same data.
    RestartStore,
    /// The node leading the workload topic's stream in a cluster of the
    /// run's own killed (SIGKILL), started again after a while.
    KillStreamLeader,
    /// A node following that stream killed, started again after a while.
    KillStreamFollower,
    /// 200 ms added to every chunk either way between herald and the
    /// store.
    Latency,
    /// Every connection between herald and the store closed.
    DropConnections,
    /// Nothing passes between herald and the store, new connections held.
    Blackhole,
    /// The store's side of every connection closed, herald's left open
    /// and silent.
    HalfOpen,
}

impl FaultKind {
    /// The faults a run can inject: process faults everywhere (pauses
    /// only where roles are processes), store and network faults on a
    /// server of its own.
    pub fn available(plan: &Plan) -> Vec<FaultKind> {
        use FaultKind::*;
        let mut kinds = vec![KillPublisher, KillMember, KillHolder];
        if plan.worker.is_some() {
            kinds.push(PauseMember);
        }
        match plan.server {
            Some(ServerKind::NatsCluster) => kinds.extend([KillStreamLeader, KillStreamFollower]),
            Some(_) => kinds.extend([RestartStore, Latency, DropConnections, Blackhole, HalfOpen]),
            None => {}
        }
        kinds
    }

    /// The kinds `plan` draws from: those it asks for, each of which it
    /// must be able to inject (`VALIDATION` names one it cannot).
    pub fn chosen(plan: &Plan) -> herald::Result<Vec<FaultKind>> {
        let available = FaultKind::available(plan);
        if plan.kinds.is_empty() {
            return Ok(available);
        }
        match plan.kinds.iter().find(|k| !available.contains(k)) {
            Some(k) => Err(herald::Error::new(
                herald::ErrorCode::Validation,
                format!(
                    "this run cannot inject {k:?} faults (pauses need roles as processes, not memory://; store and network faults need --server postgres, nats or kafka; stream leader and follower kills --server nats-cluster)"
                ),
            )),
            None => Ok(plan.kinds.clone()),
        }
    }

    /// The least it lasts, in milliseconds: a pause outlasts the ack wait.
    fn min_length(self) -> u64 {
        match self {
            FaultKind::PauseMember => ACK_WAIT.as_millis() as u64,
            _ => 0,
        }
    }

    /// The longest it lasts (how long a killed role or the store stays
    /// down, a pause, a blackhole or the added latency).
    fn max_length(self) -> Duration {
        match self {
            FaultKind::PauseMember => ACK_WAIT * 2,
            FaultKind::Latency | FaultKind::Blackhole => Duration::from_secs(3),
            FaultKind::DropConnections | FaultKind::HalfOpen => Duration::ZERO,
            FaultKind::KillStreamLeader | FaultKind::KillStreamFollower => Duration::from_secs(5),
            _ => MAX_DOWN,
        }
    }
}

/// The latency [`FaultKind::Latency`] adds.
const LATENCY: Duration = Duration::from_millis(200);

/// A fault, as scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Milliseconds after the run's start.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// Which publisher or member, for a process fault.
    pub index: u32,
    /// How long it lasts, in milliseconds (see [`FaultKind`]).
    pub length_ms: u64,
}

impl Fault {
    /// The process a process fault acts on.
    fn target(&self) -> Option<(Role, u32)> {
        match self.kind {
            FaultKind::KillPublisher => Some((Role::Publisher, self.index)),
            FaultKind::KillMember | FaultKind::KillHolder | FaultKind::PauseMember => {
                Some((Role::Member, self.index))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FaultKind::KillPublisher => format!("kill -9 {}", name(Role::Publisher, self.index)),
            FaultKind::KillMember => format!("kill -9 {}", name(Role::Member, self.index)),
            FaultKind::KillHolder => "kill -9 a member holding deliveries".into(),
            FaultKind::PauseMember => format!("pause {}", name(Role::Member, self.index)),
            FaultKind::RestartStore => "crash and restart the store".into(),
            FaultKind::KillStreamLeader => "kill -9 the stream's leader node".into(),
            FaultKind::KillStreamFollower => "kill -9 a node following the stream".into(),
            FaultKind::Latency => format!("{} ms latency", LATENCY.as_millis()),
            FaultKind::DropConnections => "drop every store connection".into(),
            FaultKind::Blackhole => "blackhole the store".into(),
            FaultKind::HalfOpen => "half-open every store connection".into(),
        };
        write!(f, "at {:>6} ms {what} ({} ms)", self.at_ms, self.length_ms)
    }
}

/// `plan`'s faults: `plan.faults` moments spread over its publishing
/// window, each of a kind and on a process chosen by the seed.
pub fn schedule(plan: &Plan) -> herald::Result<Vec<Fault>> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let window = plan.duration.as_millis().max(1) as u64;
    let kinds = FaultKind::chosen(plan)?;
    let mut faults: Vec<Fault> = (0..plan.faults)
        .map(|_| {
            let kind = kinds[rng.usize(0..kinds.len())];
            let of = match kind {
                FaultKind::KillPublisher => plan.publishers,
                _ => plan.members,
            };
            Fault {
                at_ms: rng.u64(0..window),
                kind,
                index: rng.u32(0..of.max(1)),
                length_ms: rng.u64(kind.min_length()..=kind.max_length().as_millis() as u64),
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at_ms);
    Ok(faults)
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct Run {
    pub seed: u64,
    /// The store's URL as the roles reached it.
    pub store: String,
    /// The server of the run's own it ran on, if any.
    pub server: Option<ServerKind>,
    pub schedule: Vec<Fault>,
    /// Whether the group settled everything within [`DRAIN_TIMEOUT`].
    pub drained: bool,
    pub report: Report,
}

/// One running role.
enum Running {
    Task(tokio::task::JoinHandle<()>),
    Process(tokio::process::Child),
}

impl Running {
    async fn kill(&mut self) {
        match self {
            Running::Task(t) => {
                t.abort();
                let _ = t.await;
            }
            Running::Process(p) => {
                let _ = p.kill().await;
            }
        }
    }

    /// Stop the process for `length`, then let it run again (a task
    /// cannot be paused: [`FaultKind::PauseMember`] is scheduled only
    /// where roles are processes).
    async fn pause(&mut self, length: Duration) {
        if let Running::Process(p) = self {
            if let Some(pid) = p.id() {
                // SAFETY: kill(2) on the PID of a child this value owns
                // and has not reaped.
                unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                tokio::time::sleep(length).await;
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
        }
    }

    /// Whether it ended on its own (a role whose store was unreachable
    /// when it started gives up, as a service does).
    fn exited(&mut self) -> bool {
        match self {
            Running::Task(t) => t.is_finished(),
            Running::Process(p) => !matches!(p.try_wait(), Ok(None)),
        }
    }

    async fn wait(&mut self) {
        match self {
            Running::Task(t) => {
                let _ = t.await;
            }
            Running::Process(p) => {
                let _ = p.wait().await;
            }
        }
    }
}

/// The roles of a run and how to start them again.
struct Fleet<'a> {
    plan: &'a Plan,
    /// The store's URL as the roles reach it.
    store: String,
    bus: Bus,
    epoch_us: u64,
    incarnations: std::collections::HashMap<(Role, u32), u32>,
    /// Where each role's history file ended when its current incarnation
    /// started.
    started_at: std::collections::HashMap<(Role, u32), u64>,
}

/// The name of instance `index` of `role`.
fn name(role: Role, index: u32) -> String {
    match role {
        Role::Publisher => format!("pub-{index}"),
        Role::Member => format!("member-{index}"),
        Role::Subscriber => format!("sub-{index}"),
    }
}

impl Fleet<'_> {
    fn history(&self, role: Role, index: u32) -> PathBuf {
        self.plan.dir.join(format!("{}.jsonl", name(role, index)))
    }

    /// The members whose current incarnation holds a delivery it has not
    /// acked nor handled, as its history shows.
    fn holders(&self) -> Vec<u32> {
        (0..self.plan.members)
            .filter(|&i| {
                let from = self
                    .started_at
                    .get(&(Role::Member, i))
                    .copied()
                    .unwrap_or(0);
                let Ok(bytes) = std::fs::read(self.history(Role::Member, i)) else {
                    return false;
                };
                let tail = bytes.get(from as usize..).unwrap_or_default();
                let mut held = HashSet::new();
                for record in history::read(tail).unwrap_or_default() {
                    match record {
                        Record::Deliver { event, .. } => {
                            held.insert(event.id);
                        }
                        Record::Ack { event, .. } => {
                            held.remove(&event.id);
                        }
                        Record::Handle { event, outcome, .. } if outcome != Outcome::Ok => {
                            held.remove(&event.id);
                        }
                        _ => {}
                    }
                }
                !held.is_empty()
            })
            .collect()
    }

    /// The file whose appearance stops `role`: publishers stop first, the
    /// group and the subscriber once the group has drained.
    fn stop_file(&self, role: Role) -> PathBuf {
        match role {
            Role::Publisher => self.plan.dir.join("stop-publishers"),
            _ => self.plan.dir.join("stop"),
        }
    }

    /// Start again each of `running` (instances of `role`) that ended on
    /// its own, as a supervisor (systemd, Kubernetes) restarts a service.
    fn revive(&mut self, role: Role, running: &mut [Running]) -> std::io::Result<()> {
        for (i, r) in running.iter_mut().enumerate() {
            if r.exited() {
                tracing::warn!(
                    "chaos: {} ended on its own; starting it again",
                    name(role, i as u32)
                );
                *r = self.start(role, i as u32)?;
            }
        }
        Ok(())
    }

    fn start(&mut self, role: Role, index: u32) -> std::io::Result<Running> {
        let incarnation = {
            let n = self.incarnations.entry((role, index)).or_insert(0);
            *n += 1;
            *n
        };
        let name = name(role, index);
        let history = self.history(role, index);
        let length = std::fs::metadata(&history).map_or(0, |m| m.len());
        self.started_at.insert((role, index), length);
        let stop = self.stop_file(role);
        match &self.plan.worker {
            Some(argv) => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .arg("--role")
                    .arg(format!("{role:?}").to_lowercase())
                    .arg("--name")
                    .arg(&name)
                    .arg("--incarnation")
                    .arg(incarnation.to_string())
                    .arg("--seed")
                    .arg(self.plan.seed.to_string())
                    .arg("--history")
                    .arg(&history)
                    .arg("--epoch-us")
                    .arg(self.epoch_us.to_string())
                    .arg("--stop")
                    .arg(&stop)
                    .arg("--store")
                    .arg(&self.store)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                Ok(Running::Process(cmd.spawn()?))
            }
            None => {
                let rec = Recorder::open(&history, name, self.epoch_us)?;
                let bus = self.bus.clone();
                let seed = self.plan.seed;
                Ok(Running::Task(tokio::spawn(async move {
                    role_main(&bus, &rec, role, seed, incarnation, &stop).await;
                })))
            }
        }
    }
}

/// Resolves once `stop` exists.
pub async fn stopped(stop: &Path) {
    while !stop.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `role` on `bus` until the stop file appears (a publisher finishes
/// the event it is on first).
pub async fn role_main(
    bus: &Bus,
    rec: &Recorder,
    role: Role,
    seed: u64,
    incarnation: u32,
    stop: &Path,
) {
    let result = match role {
        Role::Publisher => {
            workload::publisher(bus, rec, seed, incarnation, || stop.exists()).await;
            Ok(())
        }
        Role::Member => workload::member(bus, rec, stopped(stop)).await,
        Role::Subscriber => workload::subscriber(bus, rec, stopped(stop)).await,
    };
    if let Err(e) = result {
        tracing::warn!("chaos {}: {e}", rec.process());
    }
}

/// Run `plan`: start the roles, inject the schedule's faults, stop the
/// publishers, drain the group, stop the rest, and check the history
/// against what the store holds.
pub async fn run(plan: &Plan) -> herald::Result<Run> {
    let io = |e: std::io::Error| herald::Error::internal(format!("chaos run: {e}"));
    std::fs::create_dir_all(&plan.dir).map_err(io)?;
    for entry in std::fs::read_dir(&plan.dir).map_err(io)?.flatten() {
        let path = entry.path();
        let stop = path.ends_with("stop") || path.ends_with("stop-publishers");
        if path.extension().is_some_and(|e| e == "jsonl") || stop {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    let schedule = schedule(plan)?;
    // A server of the run's own listens behind the run's proxy, on the
    // port the proxy will take.
    let mut cluster = None;
    let (mut server, proxy, store) = match plan.server {
        Some(ServerKind::NatsCluster) => {
            let started = tokio::task::spawn_blocking(NatsCluster::start)
                .await
                .map_err(|e| herald::Error::internal(e.to_string()))??;
            let url = started.url();
            cluster = Some(started);
            (None, None, url)
        }
        Some(kind) => {
            let public = crate::server::free_port()?;
            let server = tokio::task::spawn_blocking(move || OwnServer::start(kind, public))
                .await
                .map_err(|e| herald::Error::internal(e.to_string()))??;
            let proxy = Proxy::start_on(public, server.addr()).await.map_err(io)?;
            let url = server.url();
            (Some(server), Some(proxy), url)
        }
        None => (None, None, plan.store.clone()),
    };
    let bus = open(&store).await?;
    // The checker reads the whole topic: another run's events would be
    // counted as this one's.
    if bus.last_seq(TOPIC).await?.unwrap_or(0) > 0 {
        return Err(herald::Error::new(
            herald::ErrorCode::Validation,
            format!(
                "`{TOPIC}` already has events in {store}: run against a new store (or namespace), or with --server"
            ),
        ));
    }
    let epoch_us = now_us();
    let mut fleet = Fleet {
        plan,
        store: store.clone(),
        bus: bus.clone(),
        epoch_us,
        incarnations: Default::default(),
        started_at: Default::default(),
    };
    let harness =
        Recorder::open(&plan.dir.join("harness.jsonl"), "harness", epoch_us).map_err(io)?;
    let mut publishers = Vec::new();
    let mut members = Vec::new();
    for i in 0..plan.members {
        members.push(fleet.start(Role::Member, i).map_err(io)?);
    }
    let mut subscriber = fleet.start(Role::Subscriber, 0).map_err(io)?;
    for i in 0..plan.publishers {
        publishers.push(fleet.start(Role::Publisher, i).map_err(io)?);
    }
    let start = tokio::time::Instant::now();
    // Until `$moment`, restarting any role that ended on its own.
    macro_rules! supervise_until {
        ($moment:expr, $publishers_too:expr) => {
            let moment = $moment;
            while tokio::time::Instant::now() < moment {
                if $publishers_too {
                    fleet.revive(Role::Publisher, &mut publishers).map_err(io)?;
                }
                fleet.revive(Role::Member, &mut members).map_err(io)?;
                fleet
                    .revive(Role::Subscriber, std::slice::from_mut(&mut subscriber))
                    .map_err(io)?;
                tokio::time::sleep_until(moment.min(tokio::time::Instant::now() + SUPERVISE_EVERY))
                    .await;
            }
        };
    }
    for fault in &schedule {
        supervise_until!(start + Duration::from_millis(fault.at_ms), true);
        let at = harness.at();
        let length = Duration::from_millis(fault.length_ms);
        let mut what = fault.to_string();
        let mut target = fault.target();
        if fault.kind == FaultKind::KillHolder {
            let holders = fleet.holders();
            let mut rng = fastrand::Rng::with_seed(plan.seed ^ fault.at_ms);
            let index = match holders.is_empty() {
                true => fault.index,
                false => holders[rng.usize(0..holders.len())],
            };
            what = format!(
                "kill -9 {} ({})",
                name(Role::Member, index),
                match holders.is_empty() {
                    true => "none held deliveries",
                    false => "holding deliveries",
                }
            );
            target = Some((Role::Member, index));
        }
        let until = match (fault.kind, target) {
            (FaultKind::PauseMember, Some((_, index))) => {
                members[index as usize].pause(length).await;
                Some(harness.at())
            }
            (_, Some((role, index))) => {
                let running = match role {
                    Role::Publisher => &mut publishers[index as usize],
                    _ => &mut members[index as usize],
                };
                running.kill().await;
                tokio::time::sleep(length).await;
                *running = fleet.start(role, index).map_err(io)?;
                None
            }
            (kind, None) => {
                if let Some(cluster) = cluster.as_mut() {
                    what = node_fault(kind, length, cluster, plan.seed ^ fault.at_ms).await?;
                } else {
                    store_fault(kind, length, server.as_mut(), proxy.as_ref()).await?;
                }
                Some(harness.at())
            }
        };
        harness.record(&Record::Fault {
            at,
            fault: what,
            until,
        });
    }
    supervise_until!(start + plan.duration, true);
    tracing::info!(
        "chaos: {} faults injected; stopping the publishers",
        schedule.len()
    );
    std::fs::write(fleet.stop_file(Role::Publisher), b"").map_err(io)?;
    for p in &mut publishers {
        p.wait().await;
    }
    tracing::info!("chaos: publishers stopped; draining the group");
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut drained = false;
    while !drained && tokio::time::Instant::now() < deadline {
        drained = match tokio::time::timeout(SETTLED_WAIT, settled(&bus)).await {
            Ok(Ok(settled)) => settled,
            Ok(Err(e)) => {
                tracing::warn!("chaos: the group's standing: {e}");
                false
            }
            Err(_) => {
                tracing::warn!("chaos: the group's standing took over {SETTLED_WAIT:?}");
                false
            }
        };
        if !drained {
            supervise_until!(
                tokio::time::Instant::now() + Duration::from_millis(200),
                false
            );
        }
    }
    tracing::info!(drained, "chaos: stopping the group and the subscriber");
    std::fs::write(fleet.stop_file(Role::Member), b"").map_err(io)?;
    for m in members.iter_mut().chain([&mut subscriber]) {
        m.wait().await;
    }
    tracing::info!("chaos: checking the history");
    let history = read_histories(&plan.dir)?;
    let stored = read_store(&bus).await?;
    let spec = Spec {
        effect_topic: EFFECTS.into(),
        max_deliver: MAX_DELIVER,
        group: GROUP.into(),
        group_topics: vec![TOPIC.into()],
        drained,
    };
    let report = check::check(&history, &stored, &spec);
    bus.close().await?;
    drop(proxy);
    drop(server);
    drop(cluster);
    Ok(Run {
        seed: plan.seed,
        store,
        server: plan.server,
        schedule,
        drained,
        report,
    })
}

/// Kill the node leading the workload topic's stream, or one following
/// it (chosen by `seed`), for `length`, then start it again; what was
/// done.
async fn node_fault(
    kind: FaultKind,
    length: Duration,
    cluster: &mut NatsCluster,
    seed: u64,
) -> herald::Result<String> {
    let leader = tokio::task::block_in_place(|| cluster.stream_leader(TOPIC_STREAM_SUFFIX));
    let node = match (kind, leader) {
        (FaultKind::KillStreamLeader, Some(l)) => l,
        (_, Some(l)) => (l + 1 + fastrand::Rng::with_seed(seed).usize(0..NODES - 1)) % NODES,
        (_, None) => fastrand::Rng::with_seed(seed).usize(0..NODES),
    };
    let role = match (leader, kind) {
        (None, _) => "(no leader known)",
        (Some(_), FaultKind::KillStreamLeader) => "(the stream's leader)",
        _ => "(a follower)",
    };
    cluster.kill_node(node);
    tokio::time::sleep(length).await;
    tokio::task::block_in_place(|| cluster.start_node(node))?;
    Ok(format!(
        "kill -9 node {node} {role}, down {} ms",
        length.as_millis()
    ))
}

/// The end of the workload topic's stream name on NATS (`names`).
const TOPIC_STREAM_SUFFIX: &str = "_T_chaos~orders";

/// Inject a store or network fault of `kind` lasting `length`.
async fn store_fault(
    kind: FaultKind,
    length: Duration,
    server: Option<&mut OwnServer>,
    proxy: Option<&Proxy>,
) -> herald::Result<()> {
    let (Some(server), Some(proxy)) = (server, proxy) else {
        return Ok(());
    };
    match kind {
        FaultKind::RestartStore => {
            server.crash();
            tokio::time::sleep(length).await;
            tokio::task::block_in_place(|| server.restart())?;
        }
        FaultKind::Latency => {
            proxy.set(Mode::Latency(LATENCY));
            tokio::time::sleep(length).await;
            proxy.set(Mode::Pass);
        }
        FaultKind::Blackhole => {
            proxy.set(Mode::Blackhole);
            tokio::time::sleep(length).await;
            proxy.set(Mode::Pass);
        }
        FaultKind::DropConnections => proxy.drop_connections(),
        FaultKind::HalfOpen => proxy.half_open(),
        _ => {}
    }
    Ok(())
}

/// A bus on the store at `url`; the memory store keeps every event of a
/// run (its default keeps the last 1,000 per topic), so the checker reads
/// them all.
pub async fn open(url: &str) -> herald::Result<Bus> {
    if url.starts_with("memory:") {
        let memory = MemoryTransport::new(MemoryConfig::default().history_size(MEMORY_HISTORY))?;
        return Bus::builder().transport(memory).build();
    }
    herald_store::Store::open(url).await?.bus(Config::default())
}

/// Events the memory store keeps per topic in a run (its most).
const MEMORY_HISTORY: usize = 1_000_000;

/// Whether the group has settled every event of [`TOPIC`] (lag 0).
async fn settled(bus: &Bus) -> herald::Result<bool> {
    let groups = bus.groups().await?;
    let last = bus.last_seq(TOPIC).await?.unwrap_or(0);
    let settled = groups
        .iter()
        .find(|g| g.name == GROUP)
        .and_then(|g| g.topics.iter().find(|t| t.topic.as_str() == TOPIC))
        .is_some_and(|t| t.lag == 0 && t.acked_through >= last);
    Ok(settled || last == 0)
}

/// Every history file of the run's directory, merged by time.
fn read_histories(dir: &Path) -> herald::Result<Vec<Record>> {
    let mut all = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| herald::Error::internal(e.to_string()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let file =
                std::fs::File::open(&path).map_err(|e| herald::Error::internal(e.to_string()))?;
            let records = history::read(std::io::BufReader::new(file))
                .map_err(|e| herald::Error::internal(format!("{}: {e}", path.display())))?;
            all.push(records);
        }
    }
    Ok(history::merge(all))
}

/// Every event of the workload's topics and every dead letter.
///
/// Pages by `seq`. Where a store partitions a topic (Kafka), a page from
/// `seq` n holds each partition's events from n, so the next page starts
/// at the lowest `seq` some partition still lacks, and events already
/// read are skipped; a page with nothing new ends the topic.
async fn read_store(bus: &Bus) -> herald::Result<Stored> {
    let mut events = Vec::new();
    for topic in [TOPIC, EFFECTS] {
        // Per partition: the seqs read, and how far they run unbroken.
        let mut read: BTreeMap<Option<u32>, (HashSet<u64>, u64)> = BTreeMap::new();
        let mut from = 1;
        loop {
            let page = bus
                .replay(topic, StartPosition::Seq(from), MAX_REPLAY_PAGE)
                .await?;
            let mut new = 0;
            for e in &page {
                let seq = e.seq().unwrap_or_default();
                let (seqs, _) = read.entry(e.partition()).or_default();
                if seqs.insert(seq) {
                    new += 1;
                    events.push(StoredEvent {
                        topic: topic.to_string(),
                        partition: e.partition(),
                        seq,
                        id: e.idempotency_key().into_owned(),
                        key: e.key().map(str::to_string),
                    });
                }
            }
            if new == 0 {
                break;
            }
            for (seqs, unbroken) in read.values_mut() {
                while seqs.contains(&(*unbroken + 1)) {
                    *unbroken += 1;
                }
            }
            from = read
                .values()
                .map(|(_, unbroken)| unbroken + 1)
                .min()
                .unwrap_or(1);
        }
    }
    let dead_letters = bus
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| StoredDeadLetter {
            group: d.group,
            id: d.envelope.idempotency_key().into_owned(),
            reason: d.reason,
        })
        .collect();
    Ok(Stored {
        events,
        dead_letters,
    })
}

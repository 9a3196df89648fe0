//! A fault run: the workload's roles started as processes of their own
//! (on a store that lives in one process, as tasks), process faults at
//! moments drawn from a seeded RNG, then the group drained, the histories
//! merged, the store read and the history checked.
//!
//! Owns the plan of a run ([`Plan`]), its fault schedule ([`schedule`]:
//! the same seed gives the same faults at the same moments) and its
//! result ([`Run`]). A role's work is [`workload`](crate::workload)'s;
//! what the history proves, [`check`](crate::check)'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::memory::{MemoryConfig, MemoryTransport};
use herald::{Bus, Config, StartPosition};
use serde::Serialize;

use crate::check::{self, Report, Spec, Stored, StoredDeadLetter, StoredEvent};
use crate::history::{self, Record};
use crate::workload::{self, now_us, Recorder, Role, EFFECTS, GROUP, MAX_DELIVER, TOPIC};

/// How long the group may take to settle everything once publishing
/// stops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a killed role stays down before it is started again.
const MAX_DOWN: Duration = Duration::from_millis(500);

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store's URL (`memory://`, `sqlite://PATH`, …).
    pub store: String,
    pub seed: u64,
    /// Fault moments in the run.
    pub faults: u32,
    /// How long publishers publish (faults fall in this window).
    pub duration: Duration,
    pub publishers: u32,
    pub members: u32,
    /// Where the histories go.
    pub dir: PathBuf,
    /// How a role is started: `None` runs roles as tasks of this process
    /// (the memory store), `Some(argv)` as processes: `argv` followed by
    /// the role's [`WorkerArgs`](crate::WorkerArgs).
    pub worker: Option<Vec<String>>,
}

/// A fault, as scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Milliseconds after the run's start.
    pub at_ms: u64,
    /// Which role's which instance is killed (`kill -9`, or a task
    /// aborted).
    pub role: Role,
    pub index: u32,
    /// How long it stays down, in milliseconds.
    pub down_ms: u64,
}

/// `plan`'s faults: `plan.faults` moments spread over its publishing
/// window, each killing a publisher or a group member chosen by the seed.
pub fn schedule(plan: &Plan) -> Vec<Fault> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let window = plan.duration.as_millis().max(1) as u64;
    let mut faults: Vec<Fault> = (0..plan.faults)
        .map(|_| {
            let role = if rng.bool() {
                Role::Publisher
            } else {
                Role::Member
            };
            let of = match role {
                Role::Publisher => plan.publishers,
                _ => plan.members,
            };
            Fault {
                at_ms: rng.u64(0..window),
                role,
                index: rng.u32(0..of.max(1)),
                down_ms: rng.u64(0..=MAX_DOWN.as_millis() as u64),
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at_ms);
    faults
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct Run {
    pub seed: u64,
    pub store: String,
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
    bus: Bus,
    epoch_us: u64,
    incarnations: std::collections::HashMap<(Role, u32), u32>,
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
    /// The file whose appearance stops `role`: publishers stop first, the
    /// group and the subscriber once the group has drained.
    fn stop_file(&self, role: Role) -> PathBuf {
        match role {
            Role::Publisher => self.plan.dir.join("stop-publishers"),
            _ => self.plan.dir.join("stop"),
        }
    }

    fn start(&mut self, role: Role, index: u32) -> std::io::Result<Running> {
        let incarnation = {
            let n = self.incarnations.entry((role, index)).or_insert(0);
            *n += 1;
            *n
        };
        let name = name(role, index);
        let history = self.plan.dir.join(format!("{name}.jsonl"));
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
                    .arg(&self.plan.store)
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
    let bus = open(&plan.store).await?;
    let schedule = schedule(plan);
    let epoch_us = now_us();
    let mut fleet = Fleet {
        plan,
        bus: bus.clone(),
        epoch_us,
        incarnations: Default::default(),
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
    for fault in &schedule {
        tokio::time::sleep_until(start + Duration::from_millis(fault.at_ms)).await;
        let running = match fault.role {
            Role::Publisher => &mut publishers[fault.index as usize],
            _ => &mut members[fault.index as usize],
        };
        harness.record(&Record::Fault {
            at: harness.at(),
            fault: format!("kill {}", name(fault.role, fault.index)),
        });
        running.kill().await;
        tokio::time::sleep(Duration::from_millis(fault.down_ms)).await;
        *running = fleet.start(fault.role, fault.index).map_err(io)?;
    }
    tokio::time::sleep_until(start + plan.duration).await;
    tracing::info!(
        "chaos: {} faults injected; stopping the publishers",
        schedule.len()
    );
    std::fs::write(fleet.stop_file(Role::Publisher), b"").map_err(io)?;
    for p in &mut publishers {
        p.wait().await;
    }
    tracing::info!("chaos: publishers stopped; draining the group");
    let drained = drain(&bus).await?;
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
    Ok(Run {
        seed: plan.seed,
        store: plan.store.clone(),
        schedule,
        drained,
        report,
    })
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

/// Wait until the group has settled every event of [`TOPIC`] (lag 0, the
/// topic's last `seq` not moving), up to [`DRAIN_TIMEOUT`].
async fn drain(bus: &Bus) -> herald::Result<bool> {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let groups = bus.groups().await?;
        let last = bus.last_seq(TOPIC).await?.unwrap_or(0);
        let settled = groups
            .iter()
            .find(|g| g.name == GROUP)
            .and_then(|g| g.topics.iter().find(|t| t.topic.as_str() == TOPIC))
            .is_some_and(|t| t.lag == 0 && t.acked_through >= last);
        if settled || last == 0 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
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
async fn read_store(bus: &Bus) -> herald::Result<Stored> {
    let mut events = Vec::new();
    for topic in [TOPIC, EFFECTS] {
        let mut from = 1;
        loop {
            let page = bus.replay(topic, StartPosition::Seq(from), 1_000).await?;
            let Some(last) = page.last().and_then(|e| e.seq()) else {
                break;
            };
            events.extend(page.iter().map(|e| StoredEvent {
                topic: topic.to_string(),
                seq: e.seq().unwrap_or_default(),
                id: e.idempotency_key().into_owned(),
                key: e.key().map(str::to_string),
            }));
            from = last + 1;
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

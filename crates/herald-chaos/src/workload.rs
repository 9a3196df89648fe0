//! The workload a fault run drives, one role per process (or per task,
//! on a store that lives in one process): keyed publishers (single
//! publishes and batches, each event's workload id its idempotency key),
//! members of one consumer group that publish an effect per event before
//! they ack it (and give poison events up with a cause), and a group-less
//! subscriber. Every operation is recorded in the role's own history file
//! as it ends ([`Recorder`]).
//!
//! Owns the roles and what each records. Which roles run, where, and the
//! faults between them are the harness's; what the history proves is
//! [`check`](crate::check)'s.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald::{Bus, Delivery, Error, ErrorCode, Message, Payload, StartPosition, Subscription};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::check::effect_id;
use crate::history::{self, EventRef, Outcome, Record};

/// The topic the publishers publish on.
pub const TOPIC: &str = "chaos.orders";
/// The topic the group's effects go to.
pub const EFFECTS: &str = "chaos.effects";
/// The consumer group.
pub const GROUP: &str = "chaos-members";
/// Keys the publishers spread their events over.
pub const KEYS: u64 = 16;
/// One event in this many is poison: its handler gives it up.
pub const POISON_ONE_IN: u64 = 40;
/// The group's most deliveries of one event.
pub const MAX_DELIVER: u32 = 8;
/// How long a member may hold an event before it goes to another.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// The pause between a publisher's publishes, which bounds a run's
/// history (about 100 publishes a second per publisher).
pub const PUBLISH_PAUSE: Duration = Duration::from_millis(10);
/// The most time a handler works on an event before its effect, so a
/// killed member usually holds deliveries.
pub const MAX_WORK: Duration = Duration::from_millis(30);
/// How long one publish may take before its outcome is unknown.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A role of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Publisher,
    Member,
    Subscriber,
}

/// Appends records to one process's history file, each line written
/// through at once, so a `kill -9` loses at most the line being written.
pub struct Recorder {
    file: Mutex<File>,
    process: String,
    epoch_us: u64,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Recorder {
    /// Record as `process` into `path` (appended to), times counted from
    /// `epoch_us` (the run's start, shared by every process).
    pub fn open(path: &Path, process: impl Into<String>, epoch_us: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Recorder {
            file: Mutex::new(file),
            process: process.into(),
            epoch_us,
        })
    }

    /// Microseconds since the run's start.
    pub fn at(&self) -> u64 {
        now_us().saturating_sub(self.epoch_us)
    }

    /// This process's name in its records.
    pub fn process(&self) -> String {
        self.process.clone()
    }

    /// Append `record`.
    pub fn record(&self, record: &Record) {
        let mut file = self.file.lock();
        if let Err(e) = history::write(&mut *file, record).and_then(|()| file.flush()) {
            tracing::error!("chaos: the history could not be written: {e}");
        }
    }
}

/// The outcome a publish's result means: an error that says nothing was
/// stored (the event itself refused) is `Error`; any other (a timeout, a
/// store down, a closed connection) leaves it `Unknown`.
pub fn outcome_of(e: &Error) -> Outcome {
    match e.code() {
        ErrorCode::Validation | ErrorCode::Forbidden | ErrorCode::Duplicate => Outcome::Error,
        _ => Outcome::Unknown,
    }
}

/// The event with workload id `id` on key `key`: poison when `poison`.
fn message(id: &str, key: &str, poison: bool) -> Message {
    let payload = serde_json::json!({"id": id, "poison": poison});
    Message::new(
        TOPIC,
        Payload::json(&payload).expect("a JSON object serializes"),
    )
    .key(key)
    .idempotency_key(id)
}

/// Publish events (singles and batches of up to 5, over [`KEYS`] keys)
/// as `rec`'s process, incarnation `incarnation`, until `stop` says so;
/// each whose outcome is unknown is published again (same ids) until it
/// is known.
pub async fn publisher(
    bus: &Bus,
    rec: &Recorder,
    seed: u64,
    incarnation: u32,
    stop: impl Fn() -> bool,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(incarnation) << 32));
    let mut n = 0;
    while !stop() {
        let size = if rng.bool() { 1 } else { rng.u64(2..=5) };
        let events: Vec<EventRef> = (0..size)
            .map(|i| EventRef {
                topic: TOPIC.into(),
                key: Some(format!("k{}", rng.u64(0..KEYS))),
                id: format!("{}.{incarnation}.{}", rec.process, n + i),
            })
            .collect();
        let poison: Vec<bool> = events
            .iter()
            .map(|_| rng.u64(0..POISON_ONE_IN) == 0)
            .collect();
        n += size;
        loop {
            let messages = events
                .iter()
                .zip(&poison)
                .map(|(e, p)| message(&e.id, e.key.as_deref().unwrap_or_default(), *p));
            let result = tokio::time::timeout(PUBLISH_TIMEOUT, bus.publish(messages)).await;
            let (outcome, seqs, error) = match result {
                Ok(Ok(seqs)) => (Outcome::Ok, seqs, None),
                Ok(Err(e)) => (outcome_of(&e), Vec::new(), Some(e.to_string())),
                Err(_) => (Outcome::Unknown, Vec::new(), Some("timed out".into())),
            };
            rec.record(&Record::Publish {
                at: rec.at(),
                process: rec.process(),
                events: events.clone(),
                outcome,
                seqs,
                error,
            });
            if outcome != Outcome::Unknown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(PUBLISH_PAUSE).await;
    }
}

/// The workload's reference to the event `delivery` holds.
fn event_of(delivery: &Delivery) -> EventRef {
    let env = delivery.envelope();
    EventRef {
        topic: env.topic().to_string(),
        key: env.key().map(str::to_string),
        id: env.idempotency_key().into_owned(),
    }
}

/// Be a member of [`GROUP`] until `stop` resolves: for each delivery,
/// publish its effect (idempotency key [`effect_id`]) and ack it, or give
/// a poison event up with its cause.
pub async fn member(
    bus: &Bus,
    rec: &Recorder,
    stop: impl std::future::Future<Output = ()>,
) -> herald::Result<()> {
    let deliveries = bus
        .subscribe_raw(TOPIC)
        .group(GROUP)
        .start(StartPosition::Earliest)
        .ack_wait(ACK_WAIT)
        .max_deliver(MAX_DELIVER)
        .await?;
    each(deliveries, stop, |delivery| handle(bus, rec, delivery)).await;
    Ok(())
}

/// Hand each delivery of `deliveries` to `f`, one at a time, until `stop`
/// resolves or the stream ends.
async fn each<F, Fut>(
    mut deliveries: Subscription,
    stop: impl std::future::Future<Output = ()>,
    mut f: F,
) where
    F: FnMut(Delivery) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(stop);
    loop {
        let delivery = tokio::select! {
            () = &mut stop => return,
            next = deliveries.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!("chaos: {e}");
                    continue;
                }
                None => return,
            },
        };
        f(delivery).await;
    }
}

async fn handle(bus: &Bus, rec: &Recorder, delivery: Delivery) {
    let event = event_of(&delivery);
    let env = delivery.envelope();
    let seq = env.seq().unwrap_or_default();
    rec.record(&Record::Deliver {
        at: rec.at(),
        process: rec.process(),
        group: Some(GROUP.into()),
        event: event.clone(),
        seq,
        attempt: env.attempt(),
    });
    let poison = env
        .decode::<serde_json::Value>()
        .map(|v| v["poison"] == true)
        .unwrap_or(true);
    let handled = |outcome, effect, cause| Record::Handle {
        at: rec.at(),
        process: rec.process(),
        group: GROUP.into(),
        event: event.clone(),
        seq,
        outcome,
        effect,
        cause,
    };
    if poison {
        rec.record(&handled(Outcome::Error, None, Some("poison".into())));
        if let Err(e) = delivery.term(ErrorCode::Validation, "poison").await {
            tracing::warn!("chaos member: term: {e}");
        }
        return;
    }
    tokio::time::sleep(MAX_WORK.mul_f64(fastrand::f64())).await;
    let effect = effect_id(&event.id);
    let payload = Payload::json(&serde_json::json!({"input": event.id})).expect("JSON");
    let published = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        bus.publish(Message::new(EFFECTS, payload).idempotency_key(effect.clone())),
    )
    .await;
    if !matches!(published, Ok(Ok(_))) {
        rec.record(&handled(Outcome::Unknown, None, None));
        let _ = delivery.nack().await;
        return;
    }
    rec.record(&handled(Outcome::Ok, Some(effect), None));
    let outcome = match delivery.ack().await {
        Ok(()) => Outcome::Ok,
        Err(e) => outcome_of(&e),
    };
    rec.record(&Record::Ack {
        at: rec.at(),
        process: rec.process(),
        group: GROUP.into(),
        event,
        seq,
        outcome,
    });
}

/// Follow [`TOPIC`] without a group until `stop` resolves, recording
/// each event handed over.
pub async fn subscriber(
    bus: &Bus,
    rec: &Recorder,
    stop: impl std::future::Future<Output = ()>,
) -> herald::Result<()> {
    let events = bus
        .subscribe_raw(TOPIC)
        .ephemeral()
        .start(StartPosition::Earliest)
        .await?;
    each(events, stop, |delivery| async move {
        let env = delivery.envelope();
        rec.record(&Record::Deliver {
            at: rec.at(),
            process: rec.process(),
            group: None,
            event: event_of(&delivery),
            seq: env.seq().unwrap_or_default(),
            attempt: env.attempt(),
        });
        let _ = delivery.ack().await;
    })
    .await;
    Ok(())
}

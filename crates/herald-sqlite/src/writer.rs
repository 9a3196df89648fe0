//! The writer thread: every write to the store goes through it.
//!
//! Owns the one write connection (rusqlite, on a thread of its own, so a
//! transaction's statements are plain calls, not hand-offs to another
//! thread) and group commit: it gathers waiting
//! requests — appends, dead letters, group claims and settlements — into one
//! `BEGIN IMMEDIATE … COMMIT`, so throughput is not one fsync per request.
//! A batch holds at most
//! `HERALD_SETTLE_BATCH` settlements, and with a `HERALD_SETTLE_WINDOW` the
//! writer waits that long for more before it commits one that settles.
//! When a group of requests fails, each is retried alone so one bad request
//! cannot fail the others. After each commit it publishes the highest `pos`
//! (new events) and bumps a counter (group state changed) for waiting
//! readers.
//!
//! A batch of only claims commits without an fsync (`synchronous=NORMAL`)
//! even when the store is `synchronous=FULL`: a lease needs no durability.
//! Power loss can only lose the WAL's tail after the last fsync, so such a
//! commit is lost only with every commit after it, and a lost claim is one
//! that never happened to members that are gone too (ARCHITECTURE.md,
//! "Claims are not fsynced").
//!
//! Does not own the requests' types (`request`), the signals (`conn`) or the
//! SQL each request runs (`log`, `group`, `processed`).

use std::time::{Duration, Instant};

use herald::backend::group::Claimed;
use herald::backend::schemas::SchemaVersion;
use herald::{Envelope, Result};
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::config::Synchronous;
use crate::conn::{raw_error, Signals};
use crate::group;
use crate::log::{append, insert_dead_letter};
use crate::parked::{Freed, Parked};
use crate::processed;
use crate::request::Request;
use crate::schemas;

impl Request {
    fn weight(&self) -> usize {
        match self {
            Request::Append { batch, .. } => batch.len(),
            Request::Settle(settlement, _) => 1 + settlement.effects.len(),
            _ => 1,
        }
    }
}

/// What one request produced.
enum Done {
    Seqs(Vec<u64>),
    Schema(SchemaVersion),
    Claimed(Claimed),
    Nothing,
    /// A settlement with effects came after its lease ran out.
    LeaseLost,
}

/// The write connection and its current `synchronous` setting.
struct Writer {
    conn: Connection,
    /// What the store promises (`HERALD_SQLITE_SYNCHRONOUS`).
    promised: Synchronous,
    /// What the connection is set to now.
    set: Synchronous,
}

impl Writer {
    /// Set the connection to fsync at commit when `batch` writes anything
    /// that must survive power loss, and not when it only claims.
    fn durability_for(&mut self, batch: &[Request]) -> Result<()> {
        let only_claims = batch
            .iter()
            .all(|r| matches!(r, Request::Claim(..) | Request::Poke | Request::Close));
        let wanted = if only_claims {
            Synchronous::Normal
        } else {
            self.promised
        };
        if wanted != self.set {
            let pragma = match wanted {
                Synchronous::Full => "PRAGMA synchronous = FULL",
                Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            };
            self.conn.execute_batch(pragma).map_err(raw_error)?;
            self.set = wanted;
        }
        Ok(())
    }
}

/// How the writer gathers the requests of one commit.
pub(crate) struct Gather {
    /// Most weight (events appended, settlements with their effects).
    pub(crate) max: usize,
    /// Most settlements (`HERALD_SETTLE_BATCH`).
    pub(crate) settlements: usize,
    /// How long to wait for more settlements once the waiting requests are
    /// in hand and one of them settles (`HERALD_SETTLE_WINDOW`; zero: not
    /// at all).
    pub(crate) window: Duration,
}

/// How often the writer looks for more settlements during a window.
const WINDOW_POLL: Duration = Duration::from_micros(50);

impl Gather {
    /// `first` and the requests waiting behind it, up to the limits; with
    /// a window, also those arriving within it while the batch settles
    /// something.
    fn batch(&self, requests: &mut mpsc::Receiver<Request>, first: Request) -> Vec<Request> {
        let settles = |r: &Request| usize::from(matches!(r, Request::Settle(..)));
        let (mut weight, mut settlements) = (first.weight(), settles(&first));
        let mut batch = vec![first];
        let mut deadline = None;
        while weight < self.max && settlements < self.settlements {
            match requests.try_recv() {
                Ok(r) => {
                    weight += r.weight();
                    settlements += settles(&r);
                    batch.push(r);
                }
                Err(mpsc::error::TryRecvError::Empty)
                    if settlements > 0 && !self.window.is_zero() =>
                {
                    let now = Instant::now();
                    let until = *deadline.get_or_insert(now + self.window);
                    if now >= until {
                        break;
                    }
                    std::thread::sleep(WINDOW_POLL.min(until - now));
                }
                Err(_) => break,
            }
        }
        batch
    }
}

/// The writer's loop, on a thread of its own (`store` starts it): until
/// every sender of `requests` is gone.
pub(crate) fn run(
    conn: Connection,
    mut requests: mpsc::Receiver<Request>,
    signals: Signals,
    mut parked: Parked,
    gather: Gather,
    dedupe_window_ms: i64,
    promised: Synchronous,
) {
    let mut writer = Writer {
        conn,
        promised,
        set: promised,
    };
    while let Some(first) = requests.blocking_recv() {
        let batch = gather.batch(&mut requests, first);
        serve(&mut writer, batch, &mut parked, &signals, dedupe_window_ms);
        // Leases no one took go back at once, not with the next request.
        loop {
            let orphans = parked.orphans();
            if orphans.is_empty() {
                break;
            }
            serve(
                &mut writer,
                orphans,
                &mut parked,
                &signals,
                dedupe_window_ms,
            );
        }
    }
}

/// Commit `batch` (with the parked claims when it may make events
/// claimable) and answer it; when the batch fails, each request is retried
/// alone so one bad request cannot fail the others, and the parked claims
/// run in a transaction of their own.
fn serve(
    writer: &mut Writer,
    batch: Vec<Request>,
    parked: &mut Parked,
    signals: &Signals,
    dedupe_window_ms: i64,
) {
    if batch.iter().any(|r| matches!(r, Request::Close)) {
        parked.close();
    }
    let freed = Freed::by(&batch);
    let wake = parked.any() && !freed.is_none();
    match commit(
        writer,
        &batch,
        wake.then_some((&mut *parked, &freed)),
        dedupe_window_ms,
    ) {
        Ok(done) => {
            notify(signals, &batch, &done);
            if let Some(found) = done.found {
                parked.ran(found);
            }
            reply(batch, done.results.into_iter().map(Ok), parked);
            return;
        }
        Err(e) if batch.len() == 1 && !wake => {
            reply(batch, std::iter::once(Err(e)), parked);
            return;
        }
        Err(_) => {}
    }
    for r in batch {
        let one = match commit(writer, std::slice::from_ref(&r), None, dedupe_window_ms) {
            Ok(mut done) => {
                notify(signals, std::slice::from_ref(&r), &done);
                Ok(done.results.pop().unwrap_or(Done::Nothing))
            }
            Err(e) => Err(e),
        };
        reply(vec![r], std::iter::once(one), parked);
    }
    if wake {
        // Run them all: what the batch freed is not known now.
        let poke = [Request::Poke];
        let all = Freed::by(&poke);
        match commit(writer, &poke, Some((&mut *parked, &all)), dedupe_window_ms) {
            Ok(done) => {
                notify(signals, &[], &done);
                parked.ran(done.found.unwrap_or_default());
            }
            Err(e) => parked.failed(&e),
        }
    }
}

/// Answer each request with its result, in order (a claim through
/// `parked`, which may hold it).
fn reply(batch: Vec<Request>, results: impl Iterator<Item = Result<Done>>, parked: &mut Parked) {
    for (r, result) in batch.into_iter().zip(results) {
        match r {
            Request::Append { reply, .. } => {
                let _ = reply.send(result.map(|d| match d {
                    Done::Seqs(s) => s,
                    _ => Vec::new(),
                }));
            }
            Request::Claim(claim, reply) => {
                let result = result.map(|d| match d {
                    Done::Claimed(c) => c,
                    _ => Claimed::default(),
                });
                parked.answer(claim, reply, result);
            }
            Request::DeadLetter(_, reply) => {
                let _ = reply.send(result.map(drop));
            }
            Request::RegisterSchema(_, reply) => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Schema(v) => Ok(v),
                    _ => Err(herald::Error::new(
                        herald::ErrorCode::Internal,
                        "the writer answered a registration with no version",
                    )),
                }));
            }
            Request::DeleteSchema(_, reply) => {
                let _ = reply.send(result.map(drop));
            }
            Request::Settle(_, reply) | Request::Processed(_, reply) => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::LeaseLost => Err(herald::backend::group::lease_lost()),
                    _ => Ok(()),
                }));
            }
            Request::Poke | Request::Close => {}
        }
    }
}

/// Wake readers: new events, or group state that changed (a claim that
/// leased nothing changed nothing, and waking on it would spin).
fn notify(signals: &Signals, batch: &[Request], done: &Committed) {
    let leased = |c: &Claimed| !c.events.is_empty();
    let groups_changed = batch.iter().zip(&done.results).any(|(r, d)| match (r, d) {
        (Request::Settle(..), _) => true,
        (Request::Claim(..), Done::Claimed(c)) => leased(c),
        _ => false,
    }) || done.found.iter().flatten().flatten().any(leased);
    if groups_changed {
        signals.groups.send_modify(|n| *n = n.wrapping_add(1));
    }
    if let Some(pos) = done.last_pos {
        signals.raise(pos);
    }
}

/// What one committed transaction produced.
struct Committed {
    /// Each request's result, in the batch's order.
    results: Vec<Done>,
    /// The `pos` of the last event appended.
    last_pos: Option<i64>,
    /// What each parked claim leased, when they ran.
    found: Option<Vec<Option<Claimed>>>,
}

/// One write transaction for `batch`, then the parked claims when given.
fn commit(
    writer: &mut Writer,
    batch: &[Request],
    parked: Option<(&mut Parked, &Freed)>,
    dedupe_window_ms: i64,
) -> Result<Committed> {
    writer.durability_for(batch)?;
    let conn = &writer.conn;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(raw_error)?;
    let mut windows = group::Windows::default();
    let done = write(conn, batch, &mut windows, dedupe_window_ms)
        .and_then(|(results, last_pos)| {
            let found = match parked {
                Some((parked, freed)) => Some(parked.run(conn, freed, &mut windows)?),
                None => None,
            };
            Ok(Committed {
                results,
                last_pos,
                found,
            })
        })
        .and_then(|done| {
            conn.execute_batch("COMMIT")
                .map_err(raw_error)
                .map(|()| done)
        });
    if done.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// Appends first (all together), then the other requests in order, and
/// claims last.
fn write(
    conn: &Connection,
    batch: &[Request],
    windows: &mut group::Windows,
    dedupe_window_ms: i64,
) -> Result<(Vec<Done>, Option<i64>)> {
    let appends: Vec<&[Envelope]> = batch
        .iter()
        .filter_map(|r| match r {
            Request::Append { batch, .. } => Some(batch.as_slice()),
            _ => None,
        })
        .collect();
    let appended = append(conn, &appends, dedupe_window_ms)?;
    let mut last_pos = appended.last_pos;
    let mut seqs = appended.seqs.into_iter();
    // Settlements in the order they came: an ack may lease the key's next
    // event, which a later settlement of the batch settles.
    let mut out = Vec::with_capacity(batch.len());
    for r in batch {
        out.push(match r {
            Request::Append { .. } => Done::Seqs(seqs.next().unwrap_or_default()),
            Request::DeadLetter(letter, _) => {
                insert_dead_letter(conn, letter)?;
                Done::Nothing
            }
            Request::Settle(settlement, _) => {
                match group::settle(conn, settlement, dedupe_window_ms)? {
                    group::Applied::Yes(effects) => {
                        last_pos = last_pos.max(effects);
                        Done::Nothing
                    }
                    group::Applied::Stale => Done::LeaseLost,
                }
            }
            Request::Processed(processed, _) => {
                processed::record(conn, processed)?;
                Done::Nothing
            }
            Request::RegisterSchema(registration, _) => {
                Done::Schema(schemas::register(conn, registration)?)
            }
            Request::DeleteSchema(pattern, _) => {
                schemas::delete(conn, pattern)?;
                Done::Nothing
            }
            Request::Claim(..) | Request::Poke | Request::Close => Done::Nothing,
        });
    }
    // Claims last, so they see every settlement of the batch (a delivery
    // released or nacked in it is claimable at once).
    for (r, done) in batch.iter().zip(&mut out) {
        if let Request::Claim(claim, _) = r {
            *done = Done::Claimed(group::claim(conn, claim, windows)?);
        }
    }
    Ok((out, last_pos))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald::backend::group::Settled;
    use herald::{Bus, Message, Outcome};
    use tokio::sync::oneshot;

    use super::*;
    use crate::request::Settlement;

    fn settle() -> Request {
        let envelope = Bus::memory()
            .prepare([Message::json("jobs", &1u32).unwrap()])
            .unwrap()
            .remove(0);
        let settlement = Settlement {
            group: "g".into(),
            member: "m".into(),
            envelope: Arc::new(envelope),
            pos: 1,
            outcome: Settled::Outcome(Outcome::Ack),
            max_deliver: 5,
            discards: Default::default(),
            effects: Vec::new(),
            next: None,
        };
        Request::Settle(Box::new(settlement), oneshot::channel().0)
    }

    fn gather(settlements: usize, window: Duration) -> Gather {
        Gather {
            max: 1000,
            settlements,
            window,
        }
    }

    #[test]
    fn a_batch_holds_at_most_the_settle_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..5 {
            tx.try_send(settle()).unwrap();
        }
        let g = gather(2, Duration::ZERO);
        let mut sizes = Vec::new();
        while let Ok(first) = rx.try_recv() {
            sizes.push(g.batch(&mut rx, first).len());
        }
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn a_window_takes_settlements_that_come_later_until_the_batch_is_full() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(settle()).unwrap();
        let late = std::thread::spawn(move || {
            for _ in 0..3 {
                tx.blocking_send(settle()).unwrap();
            }
        });
        // The window is far longer than the test: the batch ends because
        // it is full, with the three that came after it began.
        let first = rx.try_recv().unwrap();
        let batch = gather(4, Duration::from_secs(3600)).batch(&mut rx, first);
        assert_eq!(batch.len(), 4);
        late.join().unwrap();
    }

    #[test]
    fn a_batch_that_settles_nothing_does_not_wait() {
        let (_tx, mut rx) = mpsc::channel(16);
        let batch = gather(4, Duration::from_secs(3600)).batch(&mut rx, Request::Poke);
        assert_eq!(batch.len(), 1);
    }
}

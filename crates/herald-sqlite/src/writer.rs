//! The writer task: every write to the store goes through it.
//!
//! Owns the one write connection and group commit: it gathers waiting
//! requests — appends, dead letters, group claims and settlements — into one
//! `BEGIN IMMEDIATE … COMMIT`, so throughput is not one fsync per request.
//! When a group of requests fails, each is retried alone so one bad request
//! cannot fail the others. After each commit it publishes the highest `pos`
//! (new events) and bumps a counter (group state changed) for waiting
//! readers.

use herald::{DeadLetter, Envelope, Result};
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::append::append;
use crate::group::{self, Claim, Settlement};
use crate::store::runtime_error;
use herald::group::Claimed;

/// Work for the writer.
pub(crate) enum Request {
    /// One publish.
    Append {
        batch: Vec<Envelope>,
        reply: oneshot::Sender<Result<Vec<u64>>>,
    },
    /// Store a dead letter.
    DeadLetter(Box<DeadLetter>),
    /// Lease the next deliverable events of a group to a member.
    Claim(Box<Claim>, oneshot::Sender<Result<Claimed>>),
    /// Record how a group member settled a delivery.
    Settle(Box<Settlement>, oneshot::Sender<Result<()>>),
    /// Remember that a handler group processed a message.
    Processed(Box<crate::dedupe::Processed>, oneshot::Sender<Result<()>>),
}

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
    Claimed(Claimed),
    Nothing,
    /// A settlement with effects came after its lease ran out.
    LeaseLost,
}

/// What waiting readers watch.
#[derive(Clone)]
pub(crate) struct Signals {
    /// Highest `pos` committed.
    pub(crate) committed: watch::Sender<i64>,
    /// Bumped whenever a group's state may have changed.
    pub(crate) groups: watch::Sender<u64>,
}

impl Signals {
    /// Events up to `pos` are committed.
    pub(crate) fn raise(&self, pos: i64) {
        self.committed.send_if_modified(|current| {
            let newer = pos > *current;
            if newer {
                *current = pos;
            }
            newer
        });
    }
}

pub(crate) async fn run(
    mut conn: SqliteConnection,
    mut requests: mpsc::Receiver<Request>,
    signals: Signals,
    max: usize,
    dedupe_window_ms: i64,
) {
    while let Some(first) = requests.recv().await {
        let mut weight = first.weight();
        let mut batch = vec![first];
        while weight < max {
            match requests.try_recv() {
                Ok(r) => {
                    weight += r.weight();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        match commit(&mut conn, &batch, dedupe_window_ms).await {
            Ok((results, last_pos)) => {
                notify(&signals, &batch, &results, last_pos);
                reply(batch, results.into_iter().map(Ok));
            }
            Err(e) if batch.len() == 1 => reply(batch, std::iter::once(Err(e))),
            Err(_) => {
                for r in batch {
                    let one =
                        match commit(&mut conn, std::slice::from_ref(&r), dedupe_window_ms).await {
                            Ok((mut results, last_pos)) => {
                                notify(&signals, std::slice::from_ref(&r), &results, last_pos);
                                Ok(results.pop().unwrap_or(Done::Nothing))
                            }
                            Err(e) => Err(e),
                        };
                    reply(vec![r], std::iter::once(one));
                }
            }
        }
    }
}

/// Answer each request with its result, in order; a failed dead letter is
/// logged (its caller does not wait).
fn reply(batch: Vec<Request>, results: impl Iterator<Item = Result<Done>>) {
    for (r, result) in batch.into_iter().zip(results) {
        match r {
            Request::Append { reply, .. } => {
                let _ = reply.send(result.map(|d| match d {
                    Done::Seqs(s) => s,
                    _ => Vec::new(),
                }));
            }
            Request::Claim(_, reply) => {
                let _ = reply.send(result.map(|d| match d {
                    Done::Claimed(c) => c,
                    _ => Claimed::default(),
                }));
            }
            Request::Settle(_, reply) | Request::Processed(_, reply) => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::LeaseLost => Err(herald::group::lease_lost()),
                    _ => Ok(()),
                }));
            }
            Request::DeadLetter(letter) => {
                if let Err(e) = result {
                    tracing::error!(topic = %letter.envelope.topic(), error = %e, "could not store a dead letter");
                }
            }
        }
    }
}

/// Wake readers: new events, or group state that changed (a claim that
/// leased nothing changed nothing, and waking on it would spin).
fn notify(signals: &Signals, batch: &[Request], results: &[Done], last_pos: Option<i64>) {
    let groups_changed = batch.iter().zip(results).any(|(r, d)| match (r, d) {
        (Request::Settle(..), _) => true,
        (Request::Claim(..), Done::Claimed(c)) => !c.events.is_empty(),
        _ => false,
    });
    if groups_changed {
        signals.groups.send_modify(|n| *n = n.wrapping_add(1));
    }
    if let Some(pos) = last_pos {
        signals.raise(pos);
    }
}

/// One write transaction for `batch`: what each request produced, and the
/// `pos` of the last event appended.
async fn commit(
    conn: &mut SqliteConnection,
    batch: &[Request],
    dedupe_window_ms: i64,
) -> Result<(Vec<Done>, Option<i64>)> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    match write(conn, batch, dedupe_window_ms).await {
        Ok(done) => match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(done),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(runtime_error(e))
            }
        },
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Appends first (all together), then the other requests in order.
async fn write(
    conn: &mut SqliteConnection,
    batch: &[Request],
    dedupe_window_ms: i64,
) -> Result<(Vec<Done>, Option<i64>)> {
    let appends: Vec<&[Envelope]> = batch
        .iter()
        .filter_map(|r| match r {
            Request::Append { batch, .. } => Some(batch.as_slice()),
            _ => None,
        })
        .collect();
    let appended = append(conn, &appends, dedupe_window_ms).await?;
    let mut last_pos = appended.last_pos;
    let mut seqs = appended.seqs.into_iter();
    let mut out = Vec::with_capacity(batch.len());
    for r in batch {
        out.push(match r {
            Request::Append { .. } => Done::Seqs(seqs.next().unwrap_or_default()),
            Request::DeadLetter(letter) => {
                crate::dead_letters::insert(conn, letter).await?;
                Done::Nothing
            }
            Request::Claim(claim, _) => Done::Claimed(group::claim(conn, claim).await?),
            Request::Settle(settlement, _) => {
                match group::settle(conn, settlement, dedupe_window_ms).await? {
                    group::Applied::Yes(effects) => {
                        last_pos = last_pos.max(effects);
                        Done::Nothing
                    }
                    group::Applied::Stale => Done::LeaseLost,
                }
            }
            Request::Processed(processed, _) => {
                crate::dedupe::record(conn, processed).await?;
                Done::Nothing
            }
        });
    }
    Ok((out, last_pos))
}

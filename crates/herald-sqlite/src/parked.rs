//! Parked claims: group members waiting in the writer for something to
//! claim.
//!
//! Owns the claims that found nothing, held by the writer instead of
//! answered empty: the writer runs them again inside every transaction that
//! may make events claimable for them ([`Freed`]: it appends events of a
//! topic their group follows, published or a handler's effects, or settles
//! one of their group's deliveries) and on a [`Request::Poke`]
//! (time passing, for leases and delays that run out; commits by the outbox
//! or another process), and answers each once it leases something. So an
//! idle member gets a new event leased in the transaction that appends it,
//! and a settled key's next event in the transaction that settles the one
//! before, with no wake-up and no claim of its own in between. Also owns the
//! task that pokes the writer ([`poke`]) and handing back leases whose
//! answer found no one (the member stopped waiting): they become releases
//! in the writer's next batch, so they reach other members at once.
//!
//! Does not own the claim's SQL (`group`), the transaction (`writer`) or
//! the member's side (`member`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use herald::backend::group::{self as rules, Claimed, Settled};
use herald::backend::member;
use herald::{Envelope, Kind, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::conn::{closed, Inner};
use crate::group;
use crate::request::{Claim, Request, Settlement};

/// One parked claim.
struct Waiting {
    claim: Box<Claim>,
    reply: oneshot::Sender<Result<Claimed>>,
    /// When the claim last recorded its member as live.
    refreshed: Instant,
}

/// The writer's parked claims.
pub(crate) struct Parked {
    waiting: Vec<Waiting>,
    /// How many are parked, for the poker.
    count: Arc<AtomicUsize>,
    /// Releases of leases whose answer found no one, run at once.
    orphans: Vec<Request>,
    /// The store closed: claims are answered at once.
    closing: bool,
}

impl Parked {
    /// No claim parked yet; `count` is `Inner::parked`, which [`poke`] reads.
    pub(crate) fn new(count: Arc<AtomicUsize>) -> Parked {
        Parked {
            waiting: Vec::new(),
            count,
            orphans: Vec::new(),
            closing: false,
        }
    }

    /// Whether any claim is parked.
    pub(crate) fn any(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Answer a claim the writer ran: park it when it may wait and found
    /// nothing, else send what it found (handed back if no one takes it).
    pub(crate) fn answer(
        &mut self,
        claim: Box<Claim>,
        reply: oneshot::Sender<Result<Claimed>>,
        result: Result<Claimed>,
    ) {
        match result {
            Ok(found) if found.events.is_empty() && claim.park && !self.closing => {
                self.waiting.push(Waiting {
                    claim,
                    reply,
                    refreshed: Instant::now(),
                });
                self.count.store(self.waiting.len(), Ordering::Release);
            }
            result => self.send(&claim, reply, result),
        }
    }

    /// Run the parked claims of the groups `freed` names whose members
    /// still wait, in the writer's open transaction: what each leased, in
    /// order, `None` for those not run ([`Parked::ran`] answers them once
    /// the transaction commits).
    pub(crate) fn run(
        &mut self,
        conn: &Connection,
        freed: &Freed,
        windows: &mut group::Windows,
    ) -> Result<Vec<Option<Claimed>>> {
        self.waiting.retain(|w| !w.reply.is_closed());
        self.count.store(self.waiting.len(), Ordering::Release);
        let due = rules::MEMBER_TTL / 5;
        let mut found = Vec::with_capacity(self.waiting.len());
        for w in &mut self.waiting {
            if !freed.includes(&w.claim) {
                found.push(None);
                continue;
            }
            // Room freed meanwhile grows the claim up to a member's
            // `max_in_flight` (or what it asked, when its members together
            // asked for more).
            let most = w.claim.spec.max_in_flight.max(w.claim.max).max(1);
            w.claim.max = (w.claim.max + freed.room(&w.claim)).min(most);
            // A parked member is live: it records so as often as a claiming
            // one does, so the group's fair share counts it.
            w.claim.refresh = w.refreshed.elapsed() >= due;
            if w.claim.refresh {
                w.refreshed = Instant::now();
            }
            found.push(Some(group::claim(conn, &w.claim, windows)?));
        }
        Ok(found)
    }

    /// The transaction of a [`Parked::run`] committed: answer the claims
    /// that leased something; the others stay parked.
    pub(crate) fn ran(&mut self, found: Vec<Option<Claimed>>) {
        let mut found = found.into_iter();
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            match found.next().flatten() {
                Some(claimed) if !claimed.events.is_empty() => {
                    self.send(&w.claim, w.reply, Ok(claimed))
                }
                _ => self.waiting.push(w),
            }
        }
        self.count.store(self.waiting.len(), Ordering::Release);
    }

    /// A run's transaction failed: every parked claim answers with `error`
    /// (its member reports it, as it would its own claim's).
    pub(crate) fn failed(&mut self, error: &herald::Error) {
        for w in std::mem::take(&mut self.waiting) {
            let _ = w
                .reply
                .send(Err(herald::Error::new(error.code(), error.message())));
        }
        self.count.store(0, Ordering::Release);
    }

    /// The store closes: answer every parked claim, and park no more.
    pub(crate) fn close(&mut self) {
        self.closing = true;
        self.failed(&closed());
    }

    /// Releases of leases no member took, for the writer to run at once.
    pub(crate) fn orphans(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.orphans)
    }

    /// Send `result`; when the member stopped waiting, hand back what it
    /// leased.
    fn send(
        &mut self,
        claim: &Claim,
        reply: oneshot::Sender<Result<Claimed>>,
        result: Result<Claimed>,
    ) {
        let Err(Ok(unwanted)) = reply.send(result) else {
            return;
        };
        for (pos, envelope) in unwanted.events {
            let (reply, _) = oneshot::channel();
            let release = Settlement {
                group: claim.group.clone(),
                member: claim.member.clone(),
                envelope: Arc::new(envelope),
                pos,
                outcome: Settled::Released,
                max_deliver: claim.max_deliver,
                discards: claim.discards.clone(),
                effects: Vec::new(),
                next: None,
            };
            self.orphans.push(Request::Settle(Box::new(release), reply));
        }
    }
}

/// What a batch may let parked claims take: which groups' events it may
/// make claimable, and how much room each member gained.
pub(crate) struct Freed<'a> {
    /// It pokes: every group.
    all: bool,
    /// The topics and kinds of the events it appends (published, or a
    /// handler's effects): the groups that follow one.
    appended: HashSet<(&'a str, Kind)>,
    /// The groups whose deliveries it settles.
    groups: HashSet<&'a str>,
    /// Deliveries each member (group, member) settled: its parked claim,
    /// sized to its room when it parked, may take that many more.
    settled: HashMap<(&'a str, &'a str), usize>,
}

impl<'a> Freed<'a> {
    /// What `batch` may free.
    pub(crate) fn by(batch: &'a [Request]) -> Freed<'a> {
        let mut freed = Freed {
            all: false,
            appended: HashSet::new(),
            groups: HashSet::new(),
            settled: HashMap::new(),
        };
        let of = |e: &'a Envelope| (e.topic().as_str(), e.kind());
        for r in batch {
            match r {
                Request::Append { batch, .. } => freed.appended.extend(batch.iter().map(of)),
                Request::Poke => freed.all = true,
                Request::Settle(s, _) => {
                    freed.groups.insert(s.group.as_str());
                    freed.appended.extend(s.effects.iter().map(of));
                    // A release hands back what was never handed out: it
                    // frees no room.
                    if let Settled::Outcome(_) = s.outcome {
                        let member = (s.group.as_str(), s.member.as_str());
                        *freed.settled.entry(member).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        freed
    }

    /// Whether nothing is freed.
    pub(crate) fn is_none(&self) -> bool {
        !self.all && self.appended.is_empty() && self.groups.is_empty()
    }

    /// Whether `claim` may find something now.
    fn includes(&self, claim: &Claim) -> bool {
        self.all
            || self.groups.contains(claim.group.as_str())
            || self
                .appended
                .iter()
                .any(|(topic, kind)| claim.spec.wants(topic, *kind))
    }

    /// The room `claim`'s member gained.
    fn room(&self, claim: &Claim) -> usize {
        let member = (claim.group.as_str(), claim.member.as_str());
        self.settled.get(&member).copied().unwrap_or(0)
    }
}

/// Poke the writer while claims are parked: every
/// [`IDLE_MAX`](member::IDLE_MAX) (leases and delays run out) and when the
/// outbox or another process committed. Ends with the store.
pub(crate) async fn poke(inner: Weak<Inner>) {
    let Some(outside) = inner.upgrade().map(|i| i.signals.outside.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(member::IDLE_MAX) => {}
            _ = outside.notified() => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.parked.load(Ordering::Acquire) > 0 {
            // With the queue full, the next tick tries again.
            let _ = inner.writer.try_send(Request::Poke);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use herald::{Bus, DeliveryState, Message, Payload};

    use crate::{SqliteConfig, SqliteStore};

    async fn open(dir: &tempfile::TempDir) -> (SqliteStore, Bus) {
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("p.db")))
            .await
            .unwrap();
        (store.clone(), Bus::new(store))
    }

    /// Wait until `n` claims are parked in `store`'s writer.
    async fn parked(store: &SqliteStore, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.inner.parked.load(Ordering::Acquire) != n {
            assert!(Instant::now() < deadline, "never {n} parked");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn job(n: u64) -> Message {
        Message::new("jobs", Payload::json(&n).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_member_gets_an_event_in_the_transaction_that_appends_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut sub = bus.subscribe_raw("jobs").group("g").await.unwrap();
        let waiting = tokio::spawn(async move { sub.next().await.unwrap().unwrap() });
        parked(&store, 1).await;
        bus.publish(job(7)).await.unwrap();
        // No wake-up in between: the append's commit leased it.
        assert!(matches!(
            bus.delivery_state("jobs", 1, "g").await.unwrap(),
            DeliveryState::InFlight { .. }
        ));
        let delivery = waiting.await.unwrap();
        assert_eq!(delivery.decode::<u64>().unwrap(), 7);
        delivery.ack().await.unwrap();
        parked(&store, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handlers_effects_are_leased_in_the_transaction_of_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut jobs = bus.subscribe_raw("jobs").group("worker").await.unwrap();
        let mut done = bus.subscribe_raw("done").group("audit").await.unwrap();
        bus.publish(job(1)).await.unwrap();
        let job = jobs.next().await.unwrap().unwrap();
        let waiting = tokio::spawn(async move { done.next().await.unwrap().unwrap() });
        // Both members' claimers wait in the writer (a member's claimer
        // claims on for it while its stream is not polled).
        parked(&store, 2).await;
        let effect = Message::new("done", Payload::json(&1u64).unwrap());
        let effects = bus.prepare(vec![effect]).unwrap();
        let Ok(acked) = job.ack_with_effects(effects) else {
            panic!("SQLite acks with effects in one transaction");
        };
        acked.await.unwrap();
        assert!(matches!(
            bus.delivery_state("done", 1, "audit").await.unwrap(),
            DeliveryState::InFlight { .. }
        ));
        assert_eq!(waiting.await.unwrap().decode::<u64>().unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_member_stops_waiting_and_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut gone = bus.subscribe_raw("jobs").group("g").await.unwrap();
        let waiting = tokio::spawn(async move { gone.next().await });
        parked(&store, 1).await;
        waiting.abort();
        let _ = waiting.await;
        // The writer lets go of the claim whose member is gone.
        parked(&store, 0).await;
        let mut next = bus.subscribe_raw("jobs").group("g").await.unwrap();
        bus.publish(job(1)).await.unwrap();
        let d = next.next().await.unwrap().unwrap();
        assert_eq!(d.attempt(), 1, "the dropped member never leased it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_member_ends_its_stream_while_parked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut sub = bus.subscribe_raw("jobs").group("g").await.unwrap();
        let close = sub.close_handle();
        let waiting = tokio::spawn(async move { sub.next().await.is_none() });
        parked(&store, 1).await;
        close.close();
        assert!(waiting.await.unwrap(), "the stream ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_store_answers_parked_claims() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bus) = open(&dir).await;
        let mut sub = bus.subscribe_raw("jobs").group("g").await.unwrap();
        let waiting = tokio::spawn(async move { sub.next().await.is_none() });
        parked(&store, 1).await;
        store.close().await;
        assert!(waiting.await.unwrap(), "the stream ends");
        parked(&store, 0).await;
    }
}

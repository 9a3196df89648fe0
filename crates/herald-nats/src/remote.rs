//! Group members wherever their group's leader is, and the leader's side
//! of serving members in other processes.
//!
//! Owns [`subscribe`] for subscriptions with a group: a member of this
//! process's leader when it leads the group (becoming the leader if nobody
//! does: a leader started here also starts [`serve`]), else [`member`], a
//! remote member's subscription that claims and settles over the
//! request/reply protocol (`protocol`); when the leader stops answering it
//! takes the lease itself and goes on as a local member of its own leader.
//! [`serve`] is the leader's side: it answers claims, settlements, leaves
//! and state requests from the data the leader keeps of its remote members
//! (`protocol::Remotes`). It sits above `group` (whose [`Leader`] it
//! serves and whose lead it takes); `group` never imports it. The wire
//! types are `protocol`'s, leading a group `group`'s.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use herald::backend::{BoxFuture, Settle};
use herald::{
    Delivery, DeliveryState, Envelope, Error, ErrorCode, Outcome, Result, SubscribeSpec,
    Subscription, Topic,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::conn::Inner;
use crate::errors;
use crate::gather::Gather;
use crate::group::Leader;
use crate::protocol::{
    refusal, subject, ClaimRequest, Claimed, Leave, RemoteSeat, Remotes, Reply, SettleBody,
    SettleRequest, StateRequest, WireState, CLAIM_MAX, CLAIM_WAIT, SETTLE_MAX,
};

/// A remote member not heard from for this long is gone.
const MEMBER_SILENCE: Duration = Duration::from_secs(30);

/// Open a member of `spec`'s group: of this process's leader when it leads
/// the group (becoming the leader if nobody does), else of the leader
/// elsewhere; either way it follows the lead when it moves.
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let local = subscribe_local(inner, spec.clone()).await?;
    let consumer = inner
        .names
        .consumer(spec.group.as_deref().unwrap_or_default());
    Ok(member(inner, spec, consumer, local))
}

/// A member of this process's leader of `spec`'s group, taking the lease
/// if nobody holds it (a leader started now serves the group's members in
/// other processes); `None` when another process leads the group.
async fn subscribe_local(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Option<Subscription>> {
    let group = spec.group.clone().unwrap_or_default();
    let Some((leader, started)) = Leader::of(inner, &group, &spec).await? else {
        return Ok(None);
    };
    if started {
        let serving = (leader.clone(), inner.clone());
        tokio::spawn(async move {
            let (leader, inner) = serving;
            if let Err(e) = serve(leader, inner).await {
                tracing::warn!(error = %e, "a group's leader cannot serve members in other processes");
            }
        });
    }
    Ok(Some(leader.member()))
}

/// Answer the group's remote members until the leader stops.
pub(crate) async fn serve(leader: Arc<Leader>, inner: Arc<Inner>) -> Result<()> {
    let consumer = leader.consumer().to_owned();
    let listen = |verb: &'static str| {
        let inner = inner.clone();
        let consumer = consumer.clone();
        async move {
            inner
                .client
                .subscribe(subject(&inner, &consumer, verb))
                .await
                .map_err(|e| errors::nats(ErrorCode::Unavailable, "serve a group's members", e))
        }
    };
    let mut claims = listen("claim").await?;
    let mut settles = listen("settle").await?;
    let mut leaves = listen("leave").await?;
    let mut states = listen("state").await?;
    drop(inner);
    let weak = Arc::downgrade(&leader);
    let mut stop = leader.stopping();
    drop(leader);
    let mut sweep = tokio::time::interval(MEMBER_SILENCE / 3);
    loop {
        tokio::select! {
            Some(msg) = claims.next() => {
                let Some(leader) = weak.upgrade() else { return Ok(()) };
                tokio::spawn(claim(leader, msg));
            }
            Some(msg) = settles.next() => {
                let Some(leader) = weak.upgrade() else { return Ok(()) };
                tokio::spawn(settle(leader, msg));
            }
            Some(msg) = leaves.next() => {
                let Some(leader) = weak.upgrade() else { return Ok(()) };
                if let Ok(leave) = serde_json::from_slice::<Leave>(&msg.payload) {
                    leader.remotes().remove(&leader, &leave.member);
                }
            }
            Some(msg) = states.next() => {
                let Some(leader) = weak.upgrade() else { return Ok(()) };
                state(&leader, msg).await;
            }
            _ = sweep.tick() => {
                let Some(leader) = weak.upgrade() else { return Ok(()) };
                leader.remotes().sweep(&leader);
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn respond<T: Serialize>(leader: &Leader, msg: &async_nats::Message, reply: &Reply<T>) {
    let (Some(to), Some(inner)) = (msg.reply.clone(), leader.inner()) else {
        return;
    };
    let body = serde_json::to_vec(reply).unwrap_or_default();
    // A member that misses the reply asks again (or its deliveries run out
    // their ack wait).
    let _ = inner.client.publish(to, body.into()).await;
}

async fn claim(leader: Arc<Leader>, msg: async_nats::Message) {
    let reply: Reply<Vec<Claimed>> = match serde_json::from_slice::<ClaimRequest>(&msg.payload) {
        Err(e) => refusal(&Error::validation(format!("a bad claim: {e}"))),
        Ok(req) => match leader.remotes().take(&leader, &req).await {
            Ok(claimed) => Reply::ok(claimed),
            Err(e) => refusal(&e),
        },
    };
    respond(&leader, &msg, &reply).await;
}

async fn settle(leader: Arc<Leader>, msg: async_nats::Message) {
    match serde_json::from_slice::<SettleBody>(&msg.payload) {
        Err(e) => {
            let bad = Error::validation(format!("a bad settlement: {e}"));
            respond(&leader, &msg, &refusal::<bool>(&bad)).await;
        }
        // A member of an earlier version, one settlement per request.
        Ok(SettleBody::One(req)) => {
            let reply = finish(&leader, req).await;
            respond(&leader, &msg, &reply).await;
        }
        Ok(SettleBody::Many(batch)) if batch.len() > SETTLE_MAX => {
            let over = Error::validation(format!(
                "{} settlements in one request; at most {SETTLE_MAX}",
                batch.len()
            ));
            respond(&leader, &msg, &refusal::<bool>(&over)).await;
        }
        Ok(SettleBody::Many(batch)) => {
            let finishing = batch.into_iter().map(|req| finish(&leader, req));
            let reply = Reply::ok(futures_util::future::join_all(finishing).await);
            respond(&leader, &msg, &reply).await;
        }
    }
}

/// Settle the remote delivery `req` names; a token the leader does not know
/// is the lease-lost error.
async fn finish(leader: &Leader, req: SettleRequest) -> Reply<bool> {
    let delivery = leader
        .remotes()
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&req.token);
    match delivery {
        None => refusal(&herald::backend::group::lease_lost()),
        Some((d, _)) => match d.finish(req.outcome.into()).await {
            Ok(()) => Reply::ok(true),
            Err(e) => refusal(&e),
        },
    }
}

async fn state(leader: &Leader, msg: async_nats::Message) {
    let reply: Reply<WireState> = match serde_json::from_slice::<StateRequest>(&msg.payload) {
        Err(e) => refusal(&Error::validation(format!("a bad state request: {e}"))),
        Ok(req) => Reply::ok(match leader.state_of(&req.topic, req.seq) {
            Some(DeliveryState::InFlight { attempt }) => WireState::InFlight { attempt },
            Some(_) => WireState::Pending,
            None => WireState::Unknown,
        }),
    };
    respond(leader, &msg, &reply).await;
}

/// The leader's side of its remote members (the data is `protocol`'s).
impl Remotes {
    /// Up to `req.max` deliveries for member `req.member`.
    async fn take(&self, leader: &Arc<Leader>, req: &ClaimRequest) -> Result<Vec<Claimed>> {
        let spec = leader.spec();
        if req.patterns != herald::backend::group::patterns_text(spec)
            || req.kinds != herald::backend::group::kind_bits(spec)
        {
            return Err(Error::validation(format!(
                "group {:?} follows `{}`; a member cannot follow `{}` (or other kinds)",
                leader.group(),
                herald::backend::group::patterns_text(spec),
                req.patterns
            )));
        }
        let seat = self.seat(leader, &req.member);
        let mut sub = seat.sub.lock().await;
        let wait = Duration::from_millis(req.wait_ms).min(Duration::from_secs(30));
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(errors::closed()),
            Err(_) => return Ok(out),
        };
        // What it asks for, up to its fair share of what is ready now.
        let max = req.max.clamp(1, CLAIM_MAX).min(leader.fair_share());
        let mut next = Some(first);
        while let Some(d) = next.take() {
            out.push(self.hand_out(d)?);
            if out.len() >= max {
                break;
            }
            if let Some(Some(Ok(d))) = futures_util::FutureExt::now_or_never(sub.next()) {
                next = Some(d);
            }
        }
        *seat.seen.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        Ok(out)
    }

    fn hand_out(&self, d: Delivery) -> Result<Claimed> {
        let envelope = serde_json::value::RawValue::from_string(
            String::from_utf8(d.envelope().to_json()?).unwrap_or_default(),
        )
        .map_err(|e| Error::internal(format!("encode a delivery: {e}")))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, (d, tokio::time::Instant::now()));
        Ok(Claimed { token, envelope })
    }

    fn seat(&self, leader: &Arc<Leader>, member: &str) -> Arc<RemoteSeat> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .entry(member.to_owned())
            .or_insert_with(|| {
                let sub = leader.member();
                Arc::new(RemoteSeat {
                    close: sub.close_handle(),
                    sub: tokio::sync::Mutex::new(sub),
                    seen: Mutex::new(tokio::time::Instant::now()),
                })
            })
            .clone()
    }

    fn remove(&self, _leader: &Leader, member: &str) {
        let seat = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(member);
        if let Some(seat) = seat {
            seat.close.close();
        }
    }

    /// Drop members gone silent and deliveries past twice their ack wait
    /// (the queue redelivered them; dropping one settles nothing).
    fn sweep(&self, leader: &Leader) {
        let now = tokio::time::Instant::now();
        let silent: Vec<String> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| {
                now - *s.seen.lock().unwrap_or_else(|p| p.into_inner()) > MEMBER_SILENCE
            })
            .map(|(m, _)| m.clone())
            .collect();
        for m in silent {
            self.remove(leader, &m);
        }
        let stale = leader.spec().ack_wait * 2;
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, at)| now - *at <= stale);
    }
}

/// A member of `spec`'s group: of this process's leader through `local`
/// while it leads, else of the leader in another process; it follows the
/// lead wherever it goes until closed.
pub(crate) fn member(
    inner: &Arc<Inner>,
    spec: SubscribeSpec,
    consumer: String,
    local: Option<Subscription>,
) -> Subscription {
    let member_id = format!("{}-{:08x}", inner.member_id, fastrand::u32(..));
    let state = Remote {
        inner: Arc::downgrade(inner),
        settler: Settler::start(Arc::downgrade(inner), subject(inner, &consumer, "settle")),
        held: Arc::new(AtomicUsize::new(0)),
        spec,
        consumer,
        member: member_id,
        buffered: std::collections::VecDeque::new(),
        local_close: Arc::new(Mutex::new(local.as_ref().map(Subscription::close_handle))),
        local,
        closed: Arc::new(AtomicBool::new(false)),
    };
    let closed = state.closed.clone();
    let local_close = state.local_close.clone();
    let leave = {
        let inner = Arc::downgrade(inner);
        let (consumer, member) = (state.consumer.clone(), state.member.clone());
        move || {
            if closed.swap(true, Ordering::AcqRel) {
                return;
            }
            if let Some(local) = local_close.lock().unwrap_or_else(|p| p.into_inner()).take() {
                local.close();
            }
            if let Some(inner) = inner.upgrade() {
                let body = serde_json::to_vec(&Leave {
                    member: member.clone(),
                })
                .unwrap_or_default();
                let to = subject(&inner, &consumer, "leave");
                tokio::spawn(async move {
                    let _ = inner.client.publish(to, body.into()).await;
                });
            }
        }
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let next = state.next().await?;
        Some((next, state))
    });
    Subscription::new(
        stream,
        herald::backend::subscription::CloseHandle::new(leave),
    )
}

struct Remote {
    inner: Weak<Inner>,
    /// Where its deliveries' settlements go to the leader.
    settler: Settler,
    /// Its deliveries claimed and not yet settled (buffered ones count).
    held: Arc<AtomicUsize>,
    spec: SubscribeSpec,
    consumer: String,
    member: String,
    buffered: std::collections::VecDeque<Delivery>,
    /// Once this process took the lease: a member of its own leader.
    local: Option<Subscription>,
    /// How the subscription's close reaches `local`.
    local_close: Arc<Mutex<Option<herald::backend::subscription::CloseHandle>>>,
    closed: Arc<AtomicBool>,
}

impl Drop for Remote {
    /// Deliveries it claimed and never handed out go back to the leader
    /// without counting an attempt (deferred by zero), as the other stores
    /// release theirs; a dropped delivery would be a nack, an attempt more.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for delivery in self.buffered.drain(..) {
            runtime.spawn(delivery.defer(Duration::ZERO));
        }
    }
}

impl Remote {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                if let Some(local) = &self.local {
                    local.close();
                }
                return None;
            }
            if let Some(local) = &mut self.local {
                match local.next().await {
                    Some(next) => return Some(next),
                    // This process stopped leading: follow the next leader.
                    None => {
                        self.local = None;
                        continue;
                    }
                }
            }
            if let Some(d) = self.buffered.pop_front() {
                return Some(Ok(d));
            }
            let inner = self.inner.upgrade()?;
            if inner.check_open().is_err() {
                return None;
            }
            // Its free capacity, and at least the one its subscriber asks for.
            let free = self
                .spec
                .max_in_flight
                .min(CLAIM_MAX)
                .saturating_sub(self.held.load(Ordering::Acquire))
                .max(1);
            let req = ClaimRequest {
                member: self.member.clone(),
                max: free,
                wait_ms: CLAIM_WAIT.as_millis() as u64,
                patterns: herald::backend::group::patterns_text(&self.spec),
                kinds: herald::backend::group::kind_bits(&self.spec),
            };
            match claim_from(&inner, &self.consumer, req, &self.settler, &self.held).await {
                Ok(batch) => self.buffered.extend(batch),
                Err(e) if e.code() == ErrorCode::Unavailable => {
                    // No leader answers: lead, if nobody else took over.
                    match subscribe_local(&inner, self.spec.clone()).await {
                        Ok(Some(sub)) => {
                            *self.local_close.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(sub.close_handle());
                            if self.closed.load(Ordering::Acquire) {
                                sub.close();
                            }
                            self.local = Some(sub);
                        }
                        Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(e) => return Some(Err(e)),
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Claim deliveries from the leader of group consumer `consumer`; each is
/// settled through `settler` and counted in `held` until it is.
async fn claim_from(
    inner: &Arc<Inner>,
    consumer: &str,
    req: ClaimRequest,
    settler: &Settler,
    held: &Arc<AtomicUsize>,
) -> Result<Vec<Delivery>> {
    let body = serde_json::to_vec(&req).unwrap_or_default();
    let to = subject(inner, consumer, "claim");
    let reply = tokio::time::timeout(
        CLAIM_WAIT + inner.config.timeout(),
        inner.client.request(to, body.into()),
    )
    .await
    .map_err(|_| Error::new(ErrorCode::Unavailable, "the group's leader did not answer"))?
    .map_err(|e| errors::nats(ErrorCode::Unavailable, "claim from the group's leader", e))?;
    let claimed: Reply<Vec<Claimed>> = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::internal(format!("a bad claim reply: {e}")))?;
    let claimed = claimed.into_result()?;
    let mut out = Vec::with_capacity(claimed.len());
    for c in claimed {
        let env = Envelope::from_stored(c.envelope.get().as_bytes())?;
        let settle: Arc<dyn Settle> = Arc::new(RemoteSettle {
            settler: settler.clone(),
            token: c.token,
            _held: Held::take(held),
        });
        out.push(Delivery::new(Arc::new(env), settle));
    }
    Ok(out)
}

/// Most settle requests a remote member has on their way at once; the
/// settlements made meanwhile go together in the next.
const SETTLES_IN_FLIGHT: usize = 4;

/// A settlement waiting to go to the leader, and who waits for its answer.
type PendingSettle = (SettleRequest, oneshot::Sender<Result<()>>);

/// Sends a remote member's settlements to its group's leader in batches
/// (at most [`SETTLE_MAX`] each, [`SETTLES_IN_FLIGHT`] requests at once),
/// so a member settling many deliveries makes few round trips; its task
/// ends when the member and its deliveries are gone.
#[derive(Clone)]
struct Settler {
    tx: mpsc::UnboundedSender<PendingSettle>,
}

impl Settler {
    fn start(inner: Weak<Inner>, to: String) -> Settler {
        let (tx, mut settlements) = Gather::<PendingSettle>::channel(SETTLES_IN_FLIGHT, SETTLE_MAX);
        tokio::spawn(async move {
            while let Some((permit, batch)) = settlements.next().await {
                let Some(inner) = inner.upgrade() else {
                    for (_, answer) in batch {
                        let _ = answer.send(Err(errors::closed()));
                    }
                    continue;
                };
                let to = to.clone();
                tokio::spawn(async move {
                    settle_at(&inner, to, batch).await;
                    drop(permit);
                });
            }
        });
        Settler { tx }
    }
}

/// Send `batch` to the leader on `to` and answer each settlement.
async fn settle_at(inner: &Inner, to: String, batch: Vec<PendingSettle>) {
    let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let body = serde_json::to_vec(&requests).unwrap_or_default();
    let replied = async {
        let reply =
            inner.client.request(to, body.into()).await.map_err(|e| {
                errors::nats(ErrorCode::Unavailable, "settle at the group's leader", e)
            })?;
        serde_json::from_slice::<Reply<Vec<Reply<bool>>>>(&reply.payload)
            .map_err(|e| Error::internal(format!("a bad settle reply: {e}")))?
            .into_result()
    }
    .await;
    match replied {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            for answer in answers {
                let result = match replies.next() {
                    Some(reply) => reply.into_result().map(|_| ()),
                    None => Err(Error::internal(
                        "the group's leader answered fewer settlements than it was sent",
                    )),
                };
                let _ = answer.send(result);
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(Error::new(e.code(), e.message())));
            }
        }
    }
}

/// One delivery's share of its remote member's capacity, given back when
/// the delivery is gone (settled, or dropped and so nacked).
struct Held(Arc<AtomicUsize>);

impl Held {
    fn take(held: &Arc<AtomicUsize>) -> Held {
        held.fetch_add(1, Ordering::AcqRel);
        Held(held.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Settles a remote delivery at the leader, through its member's
/// [`Settler`].
struct RemoteSettle {
    settler: Settler,
    token: u64,
    _held: Held,
}

impl Settle for RemoteSettle {
    fn settle(
        &self,
        _envelope: &Arc<Envelope>,
        outcome: Outcome,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let (answer, answered) = oneshot::channel();
        let request = SettleRequest {
            token: self.token,
            outcome: outcome.into(),
        };
        let sent = self.settler.tx.send((request, answer)).is_ok();
        Some(Box::pin(async move {
            if !sent {
                return Err(errors::closed());
            }
            answered.await.unwrap_or_else(|_| Err(errors::closed()))
        }))
    }
}

/// The leader's view of event `seq` of `topic`, asked of the group's
/// leader in another process; `None` when none answers or it does not
/// hold the event.
pub(crate) async fn state_at_leader(
    inner: &Inner,
    consumer: &str,
    topic: &Topic,
    seq: u64,
) -> Option<DeliveryState> {
    let body = serde_json::to_vec(&StateRequest {
        topic: topic.clone(),
        seq,
    })
    .ok()?;
    let reply = tokio::time::timeout(
        inner.config.timeout(),
        inner
            .client
            .request(subject(inner, consumer, "state"), body.into()),
    )
    .await
    .ok()?
    .ok()?;
    let reply: Reply<WireState> = serde_json::from_slice(&reply.payload).ok()?;
    match reply.into_result().ok()? {
        WireState::InFlight { attempt } => Some(DeliveryState::InFlight { attempt }),
        WireState::Pending => Some(DeliveryState::Pending),
        WireState::Unknown => None,
    }
}

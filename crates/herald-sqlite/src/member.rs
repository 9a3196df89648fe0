//! A member of a durable consumer group on this store: the
//! `herald::backend::member::GroupMember` whose claims and settlements are
//! requests to the writer (which runs `group.rs`'s SQL in its transactions;
//! a claim that finds nothing waits there, `parked`) and whose wake-ups are
//! the writer's signals. Does not own the group's
//! SQL (`group`) or the dispatch of a group subscription here (`transport`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::backend::group::{self as rules, Claimed, Settled};
use herald::backend::{member, BoxFuture};
use herald::{Envelope, Result, SubscribeSpec, Subscription};
use tokio::sync::{oneshot, watch};

use crate::conn::{closed, Inner};
use crate::request::{Claim, Request, Settlement};

/// Open a member of `spec.group`: it shares this store handle's member of
/// the group (see `herald::backend::member`).
pub(crate) async fn subscribe(inner: &Arc<Inner>, spec: SubscribeSpec) -> Result<Subscription> {
    let group = spec.group.clone().expect("a group subscription");
    let member = || -> Arc<dyn member::GroupMember> {
        Arc::new(Member {
            inner: inner.clone(),
            group,
            id: uuid::Uuid::now_v7().to_string(),
            spec: spec.clone(),
            seen: std::sync::Mutex::new(None),
            interrupted: watch::Sender::new(false),
        })
    };
    inner.claimers.subscribe(&spec, member).await
}

/// This store handle's member of a group, which its members in this
/// process share: claims and settlements go through the writer.
struct Member {
    inner: Arc<Inner>,
    group: String,
    id: String,
    spec: SubscribeSpec,
    /// When the member last recorded itself as live.
    seen: std::sync::Mutex<Option<Instant>>,
    /// Its subscription ended: claims no longer wait in the writer.
    interrupted: watch::Sender<bool>,
}

impl Member {
    /// Whether this claim should record the member as live: at joining,
    /// and once a fifth of `MEMBER_TTL` passed since the last record.
    fn refresh(&self, max: usize) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        let due = max == 0 || seen.is_none_or(|at| at.elapsed() >= rules::MEMBER_TTL / 5);
        if due {
            *seen = Some(Instant::now());
        }
        due
    }
}

impl member::GroupMember for Member {
    fn claim(&self, max: usize) -> BoxFuture<'_, Result<Claimed>> {
        Box::pin(async move {
            let (reply, mut done) = oneshot::channel();
            let mut interrupted = self.interrupted.subscribe();
            let claim = Claim {
                group: self.group.clone(),
                member: self.id.clone(),
                max,
                spec: self.spec.clone(),
                max_deliver: self.spec.max_deliver_or(self.inner.config.deliveries()),
                discards: self.inner.discards.clone(),
                refresh: self.refresh(max),
                park: max > 0 && !*interrupted.borrow(),
            };
            self.inner
                .writer
                .send(Request::Claim(Box::new(claim), reply))
                .await
                .map_err(|_| closed())?;
            tokio::select! {
                answer = &mut done => answer.map_err(|_| closed())?,
                _ = interrupted.wait_for(|stop| *stop) => {
                    // Parked in the writer: stop waiting. An answer sent
                    // before the close is still taken (and released by the
                    // caller); one sent after it finds no one, and the
                    // writer hands its leases back.
                    done.close();
                    done.try_recv().unwrap_or_else(|_| Ok(Claimed::default()))
                }
            }
        })
    }

    fn interrupt(&self) {
        self.interrupted.send_replace(true);
    }

    fn settle(
        &self,
        pos: i64,
        envelope: Arc<Envelope>,
        outcome: Settled,
        effects: Vec<Envelope>,
        next: Option<rules::Next>,
    ) -> BoxFuture<'_, Result<member::Settling>> {
        Box::pin(async move {
            let (reply, done) = oneshot::channel();
            let settlement = Settlement {
                group: self.group.clone(),
                member: self.id.clone(),
                envelope,
                pos,
                outcome,
                max_deliver: self.spec.max_deliver_or(self.inner.config.deliveries()),
                discards: self.inner.discards.clone(),
                effects,
                next,
            };
            self.inner
                .writer
                .send(Request::Settle(Box::new(settlement), reply))
                .await
                .map_err(|_| closed())?;
            // The writer applies requests in the order they are queued.
            let durable: member::Settling =
                Box::pin(async move { done.await.map_err(|_| closed())? });
            Ok(durable)
        })
    }

    /// New events, settlements (the writer's signals; other processes'
    /// commits are noticed by the store's `data_version` poll), or
    /// `IDLE_MAX` for leases that run out.
    fn changes(&self) -> BoxFuture<'static, ()> {
        member::changes(self.inner.committed.clone(), self.inner.groups.clone())
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn ack_wait(&self) -> Duration {
        self.spec.ack_wait
    }

    fn pruned(&self) -> u64 {
        self.inner.pruned.load(Ordering::Acquire)
    }
}

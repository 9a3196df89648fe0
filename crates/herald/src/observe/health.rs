//! Consumer health: how each member of a consumer group in this process is
//! doing (DESIGN.md §9, `HERALD_STALL_AFTER`).
//!
//! Owns [`Health`] (one bus's members), [`Member`] (one grouped
//! subscription or handler: when it last asked for work, what it holds
//! unsettled and since when, the last time it settled something, and a
//! probe of its circuit breaker), [`InFlight`] (one delivery held, counted
//! until it is settled or dropped) and [`MemberHealth`], the snapshot that
//! `Bus::consumer_health`, `GET /v1/groups`, `herald groups` and the admin
//! page show. A member is **stalled** when it holds work and has settled
//! nothing for the stall time; **breaker open** when its handler's breaker
//! is; **running** otherwise. [`Health::refresh`] writes the gauges
//! [`CONSUMER_IN_FLIGHT`], [`CONSUMER_OLDEST_SECONDS`] and
//! [`CONSUMER_STALLED`] per group, which the SLO monitor checks before each
//! check and `/metrics` before it renders. Does not own where members come
//! from (the bus registers every subscription that names a group) nor the
//! breaker (the runtime's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::observe::metrics::Metrics;

/// Deliveries a group's members in this process hold unsettled, by `group`.
pub const CONSUMER_IN_FLIGHT: &str = "herald_consumer_in_flight";
/// How long the oldest of them has been held, seconds, by `group`.
pub const CONSUMER_OLDEST_SECONDS: &str = "herald_consumer_oldest_in_flight_seconds";
/// Members of the group in this process that are stalled, by `group`.
pub const CONSUMER_STALLED: &str = "herald_consumer_stalled";

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Settling what it takes, or waiting for work.
    Running,
    /// Holding work and settling nothing for the stall time.
    Stalled,
    /// Its handler's circuit breaker is open: it defers what it gets.
    BreakerOpen,
}

impl MemberState {
    /// The stable lowercase name (`running`, `stalled`, `breaker_open`).
    pub const fn as_str(self) -> &'static str {
        match self {
            MemberState::Running => "running",
            MemberState::Stalled => "stalled",
            MemberState::BreakerOpen => "breaker_open",
        }
    }
}

/// One member's health, as of [`Health::members`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberHealth {
    /// The consumer group.
    pub group: String,
    /// This member, unique in the process (`<kind>-<n>`).
    pub member: String,
    /// The patterns it follows.
    pub patterns: Vec<String>,
    /// When it last asked for work (`None`: not yet).
    pub last_poll: Option<DateTime<Utc>>,
    /// Deliveries it holds unsettled.
    pub in_flight: usize,
    /// How long the oldest of them has been held.
    pub oldest_in_flight: Option<Duration>,
    /// When it last settled a delivery (or joined, before the first).
    pub last_progress: DateTime<Utc>,
    /// Running, stalled or breaker open.
    pub state: MemberState,
}

/// The members of one bus; clones share them.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    stall_after: Duration,
    next: AtomicU64,
    members: Mutex<HashMap<u64, Weak<Member>>>,
    /// Groups whose gauges were set, so a group gone is set back to 0.
    reported: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("stall_after", &self.inner.stall_after)
            .field("members", &self.inner.members.lock().len())
            .finish()
    }
}

impl Health {
    /// Members stall after holding work `stall_after` without settling.
    pub fn new(stall_after: Duration) -> Health {
        Health {
            inner: Arc::new(Inner {
                stall_after,
                next: AtomicU64::new(1),
                members: Mutex::new(HashMap::new()),
                reported: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The stall time.
    pub fn stall_after(&self) -> Duration {
        self.inner.stall_after
    }

    /// Register a member of `group` following `patterns`, named `<kind>-<n>`;
    /// it is listed until the returned handle drops.
    pub fn join(&self, kind: &str, group: &str, patterns: Vec<String>) -> Arc<Member> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member {
            id: n,
            name: format!("{kind}-{n}"),
            group: group.to_owned(),
            patterns,
            health: Arc::downgrade(&self.inner),
            state: Mutex::new(State {
                last_poll: None,
                held: HashMap::new(),
                next_hold: 0,
                last_progress: (Instant::now(), Utc::now()),
            }),
            breaker_open: Mutex::new(None),
        });
        self.inner.members.lock().insert(n, Arc::downgrade(&member));
        member
    }

    /// Every member's health now, by group then member.
    pub fn members(&self) -> Vec<MemberHealth> {
        let live: Vec<Arc<Member>> = {
            let mut members = self.inner.members.lock();
            members.retain(|_, m| m.strong_count() > 0);
            members.values().filter_map(Weak::upgrade).collect()
        };
        let now = (Instant::now(), Utc::now());
        let mut out: Vec<MemberHealth> = live
            .iter()
            .map(|m| m.health(now, self.inner.stall_after))
            .collect();
        out.sort_by(|a, b| (&a.group, &a.member).cmp(&(&b.group, &b.member)));
        out
    }

    /// Write each group's gauges in `metrics` from the members now; a group
    /// with no member left here is set back to 0.
    pub fn refresh(&self, metrics: &Metrics) {
        let mut groups: HashMap<String, (usize, f64, usize)> = HashMap::new();
        for m in self.members() {
            let g = groups.entry(m.group.clone()).or_default();
            g.0 += m.in_flight;
            let oldest = m.oldest_in_flight.map_or(0.0, |d| d.as_secs_f64());
            g.1 = g.1.max(oldest);
            g.2 += usize::from(m.state == MemberState::Stalled);
        }
        let live: Vec<String> = groups.keys().cloned().collect();
        let mut reported = self.inner.reported.lock();
        for gone in reported.iter() {
            groups.entry(gone.clone()).or_insert((0, 0.0, 0));
        }
        for (group, (in_flight, oldest, stalled)) in &groups {
            let labels = [("group", group.as_str())];
            metrics
                .gauge(CONSUMER_IN_FLIGHT, &labels)
                .set(*in_flight as f64);
            metrics.gauge(CONSUMER_OLDEST_SECONDS, &labels).set(*oldest);
            metrics
                .gauge(CONSUMER_STALLED, &labels)
                .set(*stalled as f64);
        }
        *reported = live;
    }
}

/// One member of a group: a grouped subscription, or a handler's.
pub struct Member {
    id: u64,
    name: String,
    group: String,
    patterns: Vec<String>,
    health: Weak<Inner>,
    state: Mutex<State>,
    /// Whether its handler's breaker is open, when it has one.
    breaker_open: Mutex<Option<Box<dyn Fn() -> bool + Send + Sync>>>,
}

struct State {
    last_poll: Option<DateTime<Utc>>,
    /// Deliveries held, by hold number: since when.
    held: HashMap<u64, Instant>,
    next_hold: u64,
    last_progress: (Instant, DateTime<Utc>),
}

impl Member {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// It asked for work.
    pub fn polled(&self) {
        self.state.lock().last_poll = Some(Utc::now());
    }

    /// It took a delivery: held until the returned guard drops (when the
    /// delivery is settled, or dropped unsettled).
    pub fn took(self: &Arc<Self>) -> InFlight {
        let mut state = self.state.lock();
        let hold = state.next_hold;
        state.next_hold += 1;
        state.held.insert(hold, Instant::now());
        InFlight {
            member: self.clone(),
            hold,
        }
    }

    /// Report its breaker as open while `open` says so.
    pub fn breaker(&self, open: impl Fn() -> bool + Send + Sync + 'static) {
        *self.breaker_open.lock() = Some(Box::new(open));
    }

    fn health(&self, now: (Instant, DateTime<Utc>), stall_after: Duration) -> MemberHealth {
        let state = self.state.lock();
        let oldest = state.held.values().min().map(|t| now.0 - *t);
        // Holding work without settling any since the later of its last
        // settlement and taking the oldest delivery it holds: an idle
        // member that just took work has not stalled.
        let holding = oldest.map(|o| o.min(now.0 - state.last_progress.0));
        let breaker_open = self.breaker_open.lock().as_ref().is_some_and(|open| open());
        let state_now = if breaker_open {
            MemberState::BreakerOpen
        } else if holding.is_some_and(|h| h >= stall_after) {
            MemberState::Stalled
        } else {
            MemberState::Running
        };
        MemberHealth {
            group: self.group.clone(),
            member: self.name.clone(),
            patterns: self.patterns.clone(),
            last_poll: state.last_poll,
            in_flight: state.held.len(),
            oldest_in_flight: oldest,
            last_progress: state.last_progress.1,
            state: state_now,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(health) = self.health.upgrade() {
            health.members.lock().remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// One delivery a member holds; dropping it counts as progress.
#[derive(Debug)]
pub struct InFlight {
    member: Arc<Member>,
    hold: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.member.state.lock();
        if state.held.remove(&self.hold).is_some() {
            state.last_progress = (Instant::now(), Utc::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_member_holding_work_without_progress_stalls_and_recovers() {
        let health = Health::new(Duration::from_secs(60));
        let member = health.join("subscription", "billing", vec!["orders.>".into()]);
        member.polled();
        let held = member.took();
        let first = &health.members()[0];
        assert_eq!((first.state, first.in_flight), (MemberState::Running, 1));
        assert!(first.last_poll.is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        let stalled = &health.members()[0];
        assert_eq!(stalled.state, MemberState::Stalled);
        assert_eq!(stalled.oldest_in_flight, Some(Duration::from_secs(60)));
        let metrics = Metrics::new();
        health.refresh(&metrics);
        let gauge = |name| metrics.gauge(name, &[("group", "billing")]).get();
        assert_eq!(gauge(CONSUMER_STALLED), 1.0);
        assert_eq!(gauge(CONSUMER_IN_FLIGHT), 1.0);
        assert_eq!(gauge(CONSUMER_OLDEST_SECONDS), 60.0);
        drop(held);
        assert_eq!(health.members()[0].state, MemberState::Running);
        drop(member);
        assert!(health.members().is_empty(), "a dropped member leaves");
        health.refresh(&metrics);
        assert_eq!(gauge(CONSUMER_STALLED), 0.0, "a group gone reads 0");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_idle_for_long_that_takes_work_stalls_only_after_the_stall_time() {
        let health = Health::new(Duration::from_secs(60));
        let member = health.join("subscription", "billing", vec!["orders.>".into()]);
        tokio::time::advance(Duration::from_secs(600)).await;
        let _held = member.took();
        assert_eq!(health.members()[0].state, MemberState::Running);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(health.members()[0].state, MemberState::Running);
        tokio::time::advance(Duration::from_secs(1)).await;
        let stalled = &health.members()[0];
        assert_eq!(stalled.state, MemberState::Stalled);
        assert!(stalled.oldest_in_flight >= Some(Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_member_is_running_and_an_open_breaker_shows() {
        let health = Health::new(Duration::from_secs(1));
        let member = health.join("handler", "g", vec!["t".into()]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(health.members()[0].state, MemberState::Running);
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = open.clone();
        member.breaker(move || probe.load(Ordering::Relaxed));
        assert_eq!(health.members()[0].state, MemberState::BreakerOpen);
        open.store(false, Ordering::Relaxed);
        assert_eq!(health.members()[0].state, MemberState::Running);
    }
}

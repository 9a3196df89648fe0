//! How fast a durable consumer group drains a backlog, on any store, in
//! the ways a service consumes: a member loop that acks each event before
//! taking the next, and handlers (the handler runtime, 16 calls at once)
//! with acks awaited (the default) and not awaited (`await_acks(false)`).
//! The stores drained take `HERALD_SETTLE_BATCH` and `HERALD_SETTLE_WINDOW`
//! from the environment ([`settling`]), so settings can be compared; every
//! other delivery setting is the default.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use herald::config::DeliveryConfig;
use herald::{Bus, Error, Message, Result, StartPosition};
use serde::Serialize;

use super::progress;
use super::stats::Percentiles;

/// A drain that handles nothing for this long has stalled: it fails,
/// saying how far it got, rather than wait for ever.
const STALL: Duration = Duration::from_secs(60);

/// How the group's members consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// `next`, then `ack().await`, then the next.
    Loop,
    /// `Bus::handler` at its default concurrency; `await_acks` as given.
    Handler { await_acks: bool },
}

/// The delivery settings of a drained store: the defaults, with
/// `HERALD_SETTLE_BATCH` and `HERALD_SETTLE_WINDOW` from the environment.
pub fn settling() -> Result<DeliveryConfig> {
    let env = DeliveryConfig::from_env()?;
    Ok(DeliveryConfig::default()
        .settle_batch(env.settle_batch_size())
        .settle_window(env.settle_window_duration()))
}

/// Distinct keys of the drain workloads (issue goals name 100+).
pub const KEYS: usize = 100;

/// Events/s of each drain workload, with the raw baselines of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Drains {
    pub events: usize,
    /// Member loops awaiting each ack, 1 and 4 members, [`KEYS`] keys.
    pub loop_1: f64,
    pub loop_4: f64,
    /// Handlers, acks awaited (the default), 1 and 4 handlers.
    pub handler_1: f64,
    pub handler_4: f64,
    /// Four handlers, acks awaited, each on a store handle of its own, as
    /// four processes of one service would be (on NATS, they split the
    /// topic's partitions, each reading its own).
    pub apart_4: f64,
    /// Handlers with `await_acks(false)`, 1 and 4 handlers.
    pub nowait_1: f64,
    pub nowait_4: f64,
    /// Four handlers with `await_acks(false)`: every event on one key
    /// (strictly sequential), and over 10,000 keys.
    pub one_key: f64,
    pub keys_10k: f64,
    /// The engine's own client: one event per round trip or commit (what
    /// the member loop is compared with), and batched (what the handlers
    /// are compared with).
    pub raw_1: f64,
    pub raw_batched: f64,
    /// From dropping a member that holds claimed events (one handed out,
    /// one not yet) to another member having them both, with a one-minute
    /// lease (issue goal: within 1 s).
    pub handback: Percentiles,
}

impl Drains {
    /// Run every workload with `events` events; `open(label)` gives a bus
    /// on a fresh store (or namespace) for each, and `raw` the baselines
    /// as (one per round trip, batched).
    pub async fn measure<F, Fut>(events: usize, open: F, raw: (f64, f64)) -> Result<Drains>
    where
        F: Fn(&'static str) -> Fut,
        Fut: Future<Output = Result<Bus>>,
    {
        let loops = (events / 4).max(200);
        let run = |label: &'static str, n: usize, members: usize, keys: usize, how: Consumer| {
            let open = &open;
            async move {
                progress(&format!("group drain: {label}"));
                let bus = open(label).await?;
                let topic = format!("bench.drain.{label}");
                let rate = keyed_drain(
                    std::slice::from_ref(&bus),
                    &topic,
                    n,
                    members,
                    Some(keys),
                    how,
                )
                .await;
                bus.close().await?;
                rate
            }
        };
        let awaited = Consumer::Handler { await_acks: true };
        let nowait = Consumer::Handler { await_acks: false };
        Ok(Drains {
            events,
            loop_1: run("loop1", loops, 1, KEYS, Consumer::Loop).await?,
            loop_4: run("loop4", loops, 4, KEYS, Consumer::Loop).await?,
            handler_1: run("handler1", events, 1, KEYS, awaited).await?,
            handler_4: run("handler4", events, 4, KEYS, awaited).await?,
            apart_4: {
                progress("group drain: apart4");
                let mut buses = Vec::with_capacity(4);
                for _ in 0..4 {
                    buses.push(open("apart4").await?);
                }
                let rate =
                    keyed_drain(&buses, "bench.drain.apart4", events, 4, Some(KEYS), awaited).await;
                for bus in buses {
                    bus.close().await?;
                }
                rate?
            },
            nowait_1: run("nowait1", events, 1, KEYS, nowait).await?,
            nowait_4: run("nowait4", events, 4, KEYS, nowait).await?,
            one_key: run("onekey", loops / 2, 4, 1, nowait).await?,
            keys_10k: run("keys10k", events, 4, 10_000, nowait).await?,
            raw_1: raw.0,
            raw_batched: raw.1,
            handback: {
                progress("group drain: a dropped member's claims handed back");
                let bus = open("handback").await?;
                let times = handback(&bus, HANDBACK_ROUNDS).await;
                bus.close().await?;
                times?
            },
        })
    }

    /// The table: each workload, its baseline and the ratio.
    pub fn table(&self, raw_1: &str, raw_batched: &str, goal: &str) -> String {
        let row = |name: &str, rate: f64, raw: f64| {
            format!("{name:<44} {rate:>10.0} {raw:>12.0} {:>7.3}\n", rate / raw)
        };
        let mut t = format!(
            "{:<44} {:>10} {:>12} {:>7}\n",
            "group drain (receive + ack), events/s", "herald", "raw", "ratio"
        );
        t += &row("1 member loop, each ack awaited", self.loop_1, self.raw_1);
        t += &row("4 member loops, each ack awaited", self.loop_4, self.raw_1);
        t += &row("1 handler, acks awaited", self.handler_1, self.raw_batched);
        t += &row("4 handlers, acks awaited", self.handler_4, self.raw_batched);
        t += &row(
            "4 handlers, 4 store handles (processes)",
            self.apart_4,
            self.raw_batched,
        );
        t += &row(
            "1 handler, await_acks(false)",
            self.nowait_1,
            self.raw_batched,
        );
        t += &row(
            "4 handlers, await_acks(false)",
            self.nowait_4,
            self.raw_batched,
        );
        t += &row(
            "4 handlers, one key (sequential)",
            self.one_key,
            self.raw_batched,
        );
        t += &row("4 handlers, 10,000 keys", self.keys_10k, self.raw_batched);
        let h = &self.handback;
        t += &format!(
            "a dropped member's claims reach another member (ms): p50 {:.2}  p95 {:.2}  max {:.2}   goal ≤ 1000\n",
            h.p50_us / 1000.0,
            h.p95_us / 1000.0,
            h.max_us / 1000.0
        );
        t += &format!(
            "{KEYS} keys unless named; handlers run 16 calls at once.\nraw for the loops: {raw_1}; for the handlers: {raw_batched}.\n{goal}\n"
        );
        t
    }
}

/// Rounds of [`handback`].
const HANDBACK_ROUNDS: usize = 20;

/// `rounds` times, on a topic of its own: a member takes one of two events
/// (holding the other claimed), another member waits idle, the first is
/// dropped with its delivery; the time until the second member has both.
async fn handback(bus: &Bus, rounds: usize) -> Result<Percentiles> {
    use futures_util::StreamExt;
    let lease = Duration::from_secs(60);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let topic = format!("bench.handback.r{round}");
        let group = format!("handback-{round}");
        let mut first = bus
            .subscribe_raw(&topic)
            .group(&group)
            .start(StartPosition::Earliest)
            .ack_wait(lease)
            .await?;
        let batch = (0..2)
            .map(|i| Message::json(topic.clone(), &i))
            .collect::<Result<Vec<_>>>()?;
        bus.publish(batch).await?;
        let held = tokio::time::timeout(lease / 2, first.next())
            .await
            .map_err(|_| Error::internal("the first member got nothing"))?
            .ok_or_else(|| Error::internal("the first member's stream ended"))??;
        let mut second = bus
            .subscribe_raw(&topic)
            .group(&group)
            .ack_wait(lease)
            .await?;
        let dropped = Instant::now();
        drop(held);
        drop(first);
        for _ in 0..2 {
            let d = tokio::time::timeout(lease / 2, second.next())
                .await
                .map_err(|_| {
                    Error::internal("the claims were not handed back within half the lease")
                })?
                .ok_or_else(|| Error::internal("the second member's stream ended"))??;
            d.ack().await?;
        }
        samples.push(dropped.elapsed());
    }
    Ok(Percentiles::of(samples, 0))
}

/// Publish `events` to `topic` (a fresh one per run) in batches of 100,
/// spread round-robin over `keys` keys (`None`: keyless), then time
/// `members` members of one group, spread round-robin over `buses` (handles
/// of one store, as processes would hold them; the first publishes),
/// consuming them all as `how` says:
/// events/s, from the first event received to the last event handled (a
/// handler's last acks, when not awaited, may still be committing). The
/// clock starts at the first event, as the raw consumers' do, so joining
/// the group (a Kafka rebalance takes hundreds of milliseconds) is not
/// counted as draining.
pub async fn keyed_drain(
    buses: &[Bus],
    topic: &str,
    events: usize,
    members: usize,
    keys: Option<usize>,
    how: Consumer,
) -> Result<f64> {
    const BATCH: usize = 100;
    // A group per topic: a durable group keeps the topics it follows.
    let group = topic.replace('.', "-");
    let [bus, ..] = buses else {
        return Err(Error::internal("a drain needs a bus"));
    };
    let member_bus = |i: usize| &buses[i % buses.len()];
    let mut subs = Vec::new();
    if how == Consumer::Loop {
        for i in 0..members {
            subs.push(member_bus(i).subscribe_raw(topic).group(&group).await?);
        }
    }
    for chunk in 0..events.div_ceil(BATCH) {
        let n = BATCH.min(events - chunk * BATCH);
        bus.publish(
            (0..n)
                .map(|i| {
                    let message = Message::json(topic.to_owned(), &i)?;
                    Ok(match keys {
                        Some(k) => message.key(format!("k{}", (chunk * BATCH + i) % k.max(1))),
                        None => message,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        )
        .await?;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let first = Arc::new(OnceLock::new());
    match how {
        Consumer::Loop => {
            // A JoinSet: the loops are aborted when it drops, stalled or not.
            let mut loops = tokio::task::JoinSet::new();
            for sub in subs {
                loops.spawn(member_loop(sub, done.clone(), first.clone(), events));
            }
            let joined = async {
                while let Some(ended) = loops.join_next().await {
                    ended.map_err(|e| Error::internal(e.to_string()))??;
                }
                Ok(())
            };
            unless_stalled(topic, &done, events, joined).await?;
        }
        Consumer::Handler { await_acks } => {
            let finished = all_done.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let mut handlers = Vec::new();
            for i in 0..members {
                let (done, all_done, first) = (done.clone(), all_done.clone(), first.clone());
                let handler = member_bus(i)
                    .handler(topic)
                    .group(&group)
                    .start(StartPosition::Earliest)
                    .await_acks(await_acks)
                    .run(move |_| {
                        first.get_or_init(Instant::now);
                        if done.fetch_add(1, Ordering::AcqRel) + 1 == events {
                            all_done.notify_one();
                        }
                        std::future::ready(Ok(()))
                    })
                    .await?;
                handlers.push(handler);
            }
            let drained = unless_stalled(topic, &done, events, async {
                finished.await;
                Ok(())
            })
            .await;
            let rate = rate(events, &first);
            for h in handlers {
                h.shutdown(Duration::from_secs(10)).await;
            }
            return drained.map(|()| rate);
        }
    }
    Ok(rate(events, &first))
}

/// Run `drain` until it ends, or fail once `done` (of `events`) has not
/// moved for [`STALL`].
async fn unless_stalled(
    topic: &str,
    done: &AtomicUsize,
    events: usize,
    drain: impl Future<Output = Result<()>>,
) -> Result<()> {
    tokio::pin!(drain);
    let mut seen = done.load(Ordering::Acquire);
    let mut moved = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ended = &mut drain => return ended,
            _ = tick.tick() => {
                let now = done.load(Ordering::Acquire);
                if now != seen {
                    (seen, moved) = (now, Instant::now());
                } else if moved.elapsed() >= STALL {
                    return Err(Error::new(
                        herald::ErrorCode::Timeout,
                        format!(
                            "the drain of {topic} stalled: {now} of {events} events handled, none in {} s",
                            STALL.as_secs()
                        ),
                    ));
                }
            }
        }
    }
}

/// `events` over the time since `first` was set.
fn rate(events: usize, first: &OnceLock<Instant>) -> f64 {
    let took = first.get().map_or(Duration::ZERO, Instant::elapsed);
    events as f64 / took.as_secs_f64()
}

/// One member: receive (the first event received starts the clock,
/// `first`), ack (awaited), count, until `events` are counted.
async fn member_loop(
    mut sub: herald::Subscription,
    done: Arc<AtomicUsize>,
    first: Arc<OnceLock<Instant>>,
    events: usize,
) -> Result<()> {
    while done.load(Ordering::Acquire) < events {
        let next = tokio::time::timeout(
            Duration::from_millis(500),
            futures_util::StreamExt::next(&mut sub),
        );
        match next.await {
            Ok(Some(Ok(d))) => {
                first.get_or_init(Instant::now);
                d.ack().await?;
                done.fetch_add(1, Ordering::AcqRel);
            }
            Ok(_) => break,
            Err(_) => continue,
        }
    }
    Ok(())
}

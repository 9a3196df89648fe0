//! The handler runtime on each transport: outcomes settle deliveries,
//! panics are retryable failures, per-key (and per-topic) order holds
//! under concurrency,
//! shutdown never acks unprocessed work.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::{Error, ErrorCode, GroupOrdering, StartPosition};

use crate::support::{numbered, Tally, DELIVERY_WAIT};
use crate::Harness;

fn n_of(env: &herald::Envelope) -> u64 {
    env.decode::<serde_json::Value>().unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// Ok acks, a retryable error is redelivered, a terminal error is
/// dead-lettered at once, a panic is a retryable failure.
pub async fn handler_outcomes_settle_deliveries(h: &Harness) {
    let bus = h.bus().await;
    let attempts = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let handled = Arc::new(AtomicU64::new(0));
    let handler = {
        let (attempts, done, handled) = (attempts.clone(), done.clone(), handled.clone());
        bus.handler("conf.h.outcomes")
            .group("h")
            .start(StartPosition::Earliest)
            .run(move |env| {
                let (attempts, done, handled) = (attempts.clone(), done.clone(), handled.clone());
                async move {
                    let n = n_of(&env);
                    let attempt = {
                        let mut a = attempts.lock().unwrap();
                        let e = a.entry(n).or_default();
                        *e += 1;
                        *e
                    };
                    let result = match (n % 4, attempt) {
                        (1, 1) => Err(Error::new(ErrorCode::Unavailable, "try again")),
                        (2, _) => Err(Error::terminal(ErrorCode::Validation, "never")),
                        (3, 1) => panic!("first attempt of {n} panics"),
                        _ => Ok(()),
                    };
                    if (result.is_ok() || n % 4 == 2)
                        && handled.fetch_add(1, Ordering::SeqCst) + 1 == 8
                    {
                        done.notify_one();
                    }
                    result
                }
            })
            .await
            .unwrap()
    };
    let batch: Vec<_> = (0..8).map(|i| numbered("conf.h.outcomes", i)).collect();
    bus.publish(batch).await.unwrap();
    let finished = tokio::time::timeout(DELIVERY_WAIT, done.notified()).await;
    let report = handler.shutdown(Duration::from_secs(10)).await;
    finished.expect("all handled");
    assert_eq!(report.acked, 6, "{report:?}");
    assert_eq!(report.dead_lettered, 2, "{report:?}");
    assert_eq!(
        report.retried, 4,
        "two retryable errors and two panics: {report:?}"
    );
    let attempts = attempts.lock().unwrap().clone();
    for n in [2u64, 6] {
        assert_eq!(attempts[&n], 1, "a terminal error is not retried");
    }
    for n in [1u64, 3, 5, 7] {
        assert_eq!(attempts[&n], 2, "retried once, then handled");
    }
    let dead = bus.dead_letters().group("h").await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.code == ErrorCode::Validation));
}

/// 20 keys × 25 events, 8 handlers at once: no key is ever handled
/// concurrently and each key's events are handled in order.
pub async fn handler_keeps_per_key_order_under_concurrency(h: &Harness) {
    const KEYS: u64 = 20;
    const EACH: u64 = 25;
    let bus = h.bus().await;
    let state = Arc::new(Mutex::new((
        HashMap::<u64, (bool, u64)>::new(),
        Vec::<String>::new(),
    )));
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (state, handled, done) = (state.clone(), handled.clone(), done.clone());
        bus.handler("conf.h.order")
            .group("h")
            .concurrency(8)
            .start(StartPosition::Earliest)
            .run(move |env| {
                let (state, handled, done) = (state.clone(), handled.clone(), done.clone());
                async move {
                    let n = n_of(&env);
                    let key = n % KEYS;
                    {
                        let mut s = state.lock().unwrap();
                        let (busy, last) = s.0.get(&key).copied().unwrap_or((false, 0));
                        if busy {
                            s.1.push(format!("key {key}: {n} while another runs"));
                        }
                        if n < last {
                            s.1.push(format!("key {key}: {n} after {last}"));
                        }
                        s.0.insert(key, (true, n));
                    }
                    for _ in 0..(n % 3) {
                        tokio::task::yield_now().await;
                    }
                    state.lock().unwrap().0.get_mut(&key).unwrap().0 = false;
                    if handled.fetch_add(1, Ordering::SeqCst) + 1 == KEYS * EACH {
                        done.notify_one();
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    for chunk in 0..EACH {
        let batch: Vec<_> = (0..KEYS)
            .map(|k| {
                let n = chunk * KEYS + k;
                numbered("conf.h.order", n).key(format!("key{}", n % KEYS))
            })
            .collect();
        bus.publish(batch).await.unwrap();
    }
    tokio::time::timeout(DELIVERY_WAIT * 2, done.notified())
        .await
        .expect("all handled");
    let report = handler.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.acked, KEYS * EACH);
    let violations = state.lock().unwrap().1.clone();
    assert!(violations.is_empty(), "{violations:?}");
}

/// What [`per_topic_order_keeps_sessions_sequential_and_concurrent`] saw.
#[derive(Default)]
struct Sessions {
    /// Sessions with a call running.
    busy: HashSet<String>,
    /// Each session's messages in the order their calls started.
    handled: HashMap<String, Vec<u64>>,
    /// Which session each call that started was of, in order.
    starts: Vec<String>,
    violations: Vec<String>,
}

/// A group ordered per topic (DESIGN.md's chat session per topic): 10
/// keyless messages on each of 2 session topics, published interleaved, to a
/// handler running 8 calls at once. Each session's messages are handled
/// one at a time and in publish order, and the sessions side by side:
/// message `i` of one waits until message `i` of the other has started, so
/// a group that ran one session's messages at once breaks the order, and
/// one that ran the sessions one after the other never finishes. A member
/// asking the group for per-key order is refused.
pub async fn per_topic_order_keeps_sessions_sequential_and_concurrent(h: &Harness) {
    per_topic_sessions(&h.bus().await).await;
}

/// A partitioned store (NATS, Kafka) with topics of several partitions:
/// `spread` spreads keyless events over them and refuses a group ordered
/// per topic (naming `HERALD_KEYLESS_PARTITION=topic`); `by_topic` puts a
/// topic's keyless events in one partition and keeps each session in
/// order ([`per_topic_sessions`]).
pub async fn per_topic_order_on_partitioned_topics(spread: &herald::Bus, by_topic: &herald::Bus) {
    let refused = spread
        .subscribe_raw("conf.session.*")
        .group("sessions")
        .ordering(GroupOrdering::PerTopic)
        .await;
    let Err(refused) = refused else {
        panic!("refused while keyless events spread over the partitions");
    };
    assert_eq!(refused.code(), ErrorCode::Validation, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("HERALD_KEYLESS_PARTITION=topic"),
        "{refused}"
    );
    per_topic_sessions(by_topic).await;
}

/// The scenario of [`per_topic_order_keeps_sessions_sequential_and_concurrent`]
/// on `bus`: for a partitioned store, on topics of several partitions.
pub async fn per_topic_sessions(bus: &herald::Bus) {
    const EACH: u64 = 10;
    const SESSIONS: [&str; 2] = ["conf.session.a", "conf.session.b"];
    let state = Arc::new(Mutex::new(Sessions::default()));
    let (started, _) = tokio::sync::watch::channel(HashSet::<(String, u64)>::new());
    let started = Arc::new(started);
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (state, started) = (state.clone(), started.clone());
        let (handled, done) = (handled.clone(), done.clone());
        bus.handler("conf.session.*")
            .group("sessions")
            .ordering(GroupOrdering::PerTopic)
            .concurrency(8)
            .start(StartPosition::Earliest)
            .run(move |env| {
                let (state, started) = (state.clone(), started.clone());
                let (handled, done) = (handled.clone(), done.clone());
                async move {
                    let topic = env.topic().as_str().to_owned();
                    let n = n_of(&env);
                    {
                        let mut s = state.lock().unwrap();
                        if !s.busy.insert(topic.clone()) {
                            s.violations
                                .push(format!("{topic}: {n} while another of it runs"));
                        }
                        let seen = s.handled.entry(topic.clone()).or_default();
                        match seen.last() {
                            Some(&last) if n < last => {
                                let v = format!("{topic}: {n} after {last}");
                                s.violations.push(v);
                            }
                            Some(&last) if n == last => {}
                            _ => seen.push(n),
                        }
                        s.starts.push(topic.clone());
                    }
                    started.send_modify(|s| {
                        s.insert((topic.clone(), n));
                    });
                    let other = SESSIONS.iter().find(|t| **t != topic).unwrap().to_string();
                    let mut seen = started.subscribe();
                    seen.wait_for(|s| s.contains(&(other.clone(), n)))
                        .await
                        .unwrap();
                    state.lock().unwrap().busy.remove(&topic);
                    if handled.fetch_add(1, Ordering::SeqCst) + 1 == EACH * 2 {
                        done.notify_one();
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    let refused = bus.subscribe_raw("conf.session.*").group("sessions").await;
    let Err(refused) = refused else {
        panic!("a member asking a per-topic group for per-key order is refused");
    };
    assert_eq!(refused.code(), ErrorCode::Validation, "{refused}");
    let batch: Vec<_> = (0..EACH)
        .flat_map(|n| SESSIONS.map(|topic| numbered(topic, n)))
        .collect();
    bus.publish(batch).await.unwrap();
    let finished = tokio::time::timeout(DELIVERY_WAIT * 2, done.notified()).await;
    let report = handler.shutdown(Duration::from_secs(10)).await;
    let s = state.lock().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(
        finished.is_ok(),
        "the sessions did not run side by side: started {:?}",
        s.starts
    );
    for topic in SESSIONS {
        assert_eq!(s.handled[topic], (0..EACH).collect::<Vec<_>>(), "{topic}");
    }
    let mut lead = 0i64;
    for topic in &s.starts {
        lead += if topic == SESSIONS[0] { 1 } else { -1 };
        assert!(
            lead.abs() <= 1,
            "the sessions did not interleave: {:?}",
            s.starts
        );
    }
    assert_eq!(report.acked, EACH * 2, "{report:?}");
}

/// Shutdown lets in-flight handlers finish within the deadline and stops the
/// rest unsettled: on a durable transport a new handler of the group gets
/// those again; nothing unprocessed is acked.
pub async fn handler_shutdown_never_acks_unprocessed_work(h: &Harness) {
    let (restart, bus) = restartable_or_not(h, "handler shutdown and restart").await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let tally = Tally::new();
    let handler = {
        let started = started.clone();
        bus.handler("conf.h.shutdown")
            .group("h")
            .concurrency(4)
            .start(StartPosition::Earliest)
            .observe(tally.clone())
            .run(move |env| {
                let started = started.clone();
                async move {
                    started.add_permits(1);
                    if n_of(&env) % 2 == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    bus.publish(
        (0..4)
            .map(|i| numbered("conf.h.shutdown", i))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let all = tokio::time::timeout(DELIVERY_WAIT, started.acquire_many(4)).await;
    all.expect("all four started").unwrap().forget();
    // The two that finish are settled before the shutdown starts: on a
    // loaded machine their acks' commits can outlast its deadline.
    tally.until("acked", 2).await;
    let report = handler.shutdown(Duration::from_millis(100)).await;
    assert_eq!((report.acked, report.abandoned), (2, 2), "{report:?}");
    let Some(r) = restart else {
        return;
    };
    bus.close().await.unwrap();
    let bus = r.reopen().await;
    let again = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let again = again.clone();
        bus.handler("conf.h.shutdown")
            .group("h")
            .run(move |env| {
                let again = again.clone();
                async move {
                    again.lock().unwrap().push(n_of(&env));
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    // Without exact resume (a broker that drops Kafka's commit metadata),
    // the two acked after a held one may come again too.
    let exact = bus.features().exact_resume;
    let back = |g: &Vec<u64>| {
        if exact {
            g.len() >= 2
        } else {
            g.contains(&0) && g.contains(&2)
        }
    };
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while !back(&again.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "abandoned work never came back"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handler.shutdown(Duration::from_secs(5)).await;
    let mut got = again.lock().unwrap().clone();
    got.sort_unstable();
    if exact {
        assert_eq!(got, [0, 2], "only the unfinished messages come back");
    } else {
        println!("conformance: `handler shutdown and restart`: events acked after a held one may come back: the transport does not claim `exact_resume`");
        got.dedup();
        assert!(
            got.iter().all(|n| *n < 4),
            "only this test's events: {got:?}"
        );
    }
}

/// With a retry policy, a retryable failure is redelivered after the
/// backoff until it succeeds or the policy gives up, which dead-letters it
/// with the failure's code.
pub async fn handler_retries_with_backoff_then_dead_letters(h: &Harness) {
    use herald::retry::RetryPolicy;
    let bus = h.bus().await;
    let policy = RetryPolicy::default()
        .base(Duration::from_millis(40))
        .max_attempts(2);
    let tries = Arc::new(Mutex::new(HashMap::<u64, Vec<std::time::Instant>>::new()));
    let finished = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (tries, finished) = (tries.clone(), finished.clone());
        bus.handler("conf.h.retry")
            .group("h")
            .start(StartPosition::Earliest)
            .retry(policy)
            .run(move |env| {
                let (tries, finished) = (tries.clone(), finished.clone());
                async move {
                    let n = n_of(&env);
                    let count = {
                        let mut t = tries.lock().unwrap();
                        let v = t.entry(n).or_default();
                        v.push(std::time::Instant::now());
                        v.len()
                    };
                    if n <= 1 && count == 3 {
                        finished.notify_one();
                    }
                    match (n, count) {
                        (0, 3) => Ok(()),
                        _ => Err(Error::new(ErrorCode::Timeout, "downstream slow")),
                    }
                }
            })
            .await
            .unwrap()
    };
    bus.publish([numbered("conf.h.retry", 0), numbered("conf.h.retry", 1)])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while tries.lock().unwrap().values().map(Vec::len).sum::<usize>() < 6
        || bus.dead_letters().group("h").await.unwrap().is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retries did not finish"
        );
        tokio::time::timeout(Duration::from_millis(50), finished.notified())
            .await
            .ok();
    }
    let report = handler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (report.acked, report.dead_lettered, report.retried),
        (1, 1, 4),
        "{report:?}"
    );
    for (n, times) in tries.lock().unwrap().iter() {
        assert_eq!(times.len(), 3, "message {n}: one try and two retries");
        assert!(
            times[1] - times[0] >= Duration::from_millis(20),
            "first retry waits ≥ base × 0.5"
        );
        assert!(
            times[2] - times[1] >= Duration::from_millis(40),
            "second retry waits ≥ 2 × base × 0.5"
        );
    }
    let dead = bus.dead_letters().group("h").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, ErrorCode::Timeout);
    assert_eq!(dead[0].attempts, 3);
}

/// A call over the handler's timeout is stopped and retried.
pub async fn handler_timeout_is_a_retryable_failure(h: &Harness) {
    let bus = h.bus().await;
    let calls = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (calls, done) = (calls.clone(), done.clone());
        bus.handler("conf.h.timeout")
            .group("h")
            .start(StartPosition::Earliest)
            .timeout(Duration::from_millis(50))
            .run(move |_| {
                let (calls, done) = (calls.clone(), done.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    done.notify_one();
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    bus.publish(numbered("conf.h.timeout", 1)).await.unwrap();
    tokio::time::timeout(DELIVERY_WAIT, done.notified())
        .await
        .expect("handled on the retry");
    let report = handler.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.acked, report.retried), (1, 1), "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Shutdown keeps its deadline even when every slot is held by a call that
/// never ends and the runtime waits for a slot with a message in hand; the
/// messages come back after a restart.
pub async fn handler_shutdown_keeps_its_deadline_when_every_call_hangs(h: &Harness) {
    let (restart, bus) = restartable_or_not(h, "handler shutdown with hung calls").await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let started = started.clone();
        bus.handler("conf.h.hung")
            .group("h")
            .concurrency(1)
            .start(StartPosition::Earliest)
            .run(move |_env| {
                started.add_permits(1);
                std::future::pending::<Result<(), Error>>()
            })
            .await
            .unwrap()
    };
    bus.publish(
        (0..3)
            .map(|i| numbered("conf.h.hung", i))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(DELIVERY_WAIT, started.acquire()).await;
    first.expect("the first call started").unwrap().forget();
    let report = tokio::time::timeout(DELIVERY_WAIT, handler.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown returns after its deadline");
    assert_eq!((report.acked, report.abandoned), (0, 1), "{report:?}");
    let Some(r) = restart else {
        return;
    };
    bus.close().await.unwrap();
    let bus = r.reopen().await;
    let mut sub = bus.subscribe_raw("conf.h.hung").group("h").await.unwrap();
    let mut got = crate::support::numbers(&mut sub, 3).await;
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2], "nothing was acked unprocessed");
}

/// A restartable bus where the transport is durable, else a plain one: the
/// scenario runs either way and checks the restart only where there is one.
async fn restartable_or_not(
    h: &Harness,
    scenario: &str,
) -> (Option<crate::Restartable>, herald::Bus) {
    let restart = h.restartable(scenario).await;
    let bus = match &restart {
        Some(r) => r.bus.clone(),
        None => h.bus().await,
    };
    (restart, bus)
}

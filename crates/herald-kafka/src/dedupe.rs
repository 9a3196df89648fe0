//! The idempotency keys this process publishes: each (topic, key) is
//! written once within the dedupe window, also when it is published again
//! while its first publish still waits for its delivery report.
//!
//! Owns [`Dedupe`]: a key is claimed before its record is sent. A publish
//! that finds a key written gets its `seq`; one that finds it in flight
//! waits for that publish's outcome (the `seq`, or — when it failed or was
//! dropped — its own turn to send). Remembering keys only once their
//! reports arrived would let a second publish of a key pass while the first
//! is on its way, which is what a handler does when its ack wait runs out
//! while its effects are being published.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

/// A topic and an idempotency key.
pub(crate) type Key = (String, String);

/// Most idempotency keys this process remembers at once (the oldest go first).
const CAPACITY: usize = 200_000;

/// Idempotency keys published recently, with their `seq`, and those on
/// their way to the brokers.
#[derive(Default)]
pub(crate) struct Dedupe {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    seen: HashMap<Key, Entry>,
    /// Written keys in the order they were written, to forget them by.
    order: VecDeque<(Key, Instant)>,
    next_claim: u64,
}

enum Entry {
    Written {
        seq: u64,
        at: Instant,
    },
    InFlight {
        claim: u64,
        outcome: watch::Receiver<Option<u64>>,
    },
}

/// What a publish does with a key.
pub(crate) enum Claim<'a> {
    /// Written within the window, with this `seq`: nothing to send.
    Written(u64),
    /// Another publish is sending it: wait for its outcome
    /// ([`Dedupe::outcome`]).
    InFlight(watch::Receiver<Option<u64>>),
    /// This publish sends it; the key is released when the claim drops
    /// without [`Mine::written`].
    Mine(Mine<'a>),
}

/// A key this publish sends.
pub(crate) struct Mine<'a> {
    dedupe: &'a Dedupe,
    key: Key,
    claim: u64,
    outcome: watch::Sender<Option<u64>>,
    done: bool,
}

impl Dedupe {
    /// Claim `key`, forgetting keys written longer than `window` ago.
    pub(crate) fn claim(&self, key: Key, window: Duration) -> Claim<'_> {
        let mut state = self.state.lock();
        state.forget(window);
        match state.seen.get(&key) {
            Some(Entry::Written { seq, .. }) => Claim::Written(*seq),
            Some(Entry::InFlight { outcome, .. }) => Claim::InFlight(outcome.clone()),
            None => {
                let claim = state.next_claim;
                state.next_claim += 1;
                let (tx, rx) = watch::channel(None);
                state
                    .seen
                    .insert(key.clone(), Entry::InFlight { claim, outcome: rx });
                Claim::Mine(Mine {
                    dedupe: self,
                    key,
                    claim,
                    outcome: tx,
                    done: false,
                })
            }
        }
    }

    /// The `seq` a publish in flight wrote its key at; `None` when it
    /// failed or was dropped (claim the key again).
    pub(crate) async fn outcome(mut rx: watch::Receiver<Option<u64>>) -> Option<u64> {
        rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
    }
}

impl State {
    fn forget(&mut self, window: Duration) {
        let now = Instant::now();
        while let Some((k, at)) = self.order.front() {
            if now.duration_since(*at) < window && self.order.len() <= CAPACITY {
                break;
            }
            if matches!(self.seen.get(k), Some(Entry::Written { at: t, .. }) if t == at) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
    }
}

impl Mine<'_> {
    /// The key's record is written at `seq`: remember it, and tell the
    /// publishes waiting for it.
    pub(crate) fn written(mut self, seq: u64) {
        let now = Instant::now();
        let mut state = self.dedupe.state.lock();
        state.order.push_back((self.key.clone(), now));
        state
            .seen
            .insert(self.key.clone(), Entry::Written { seq, at: now });
        drop(state);
        self.outcome.send_replace(Some(seq));
        self.done = true;
    }
}

impl Drop for Mine<'_> {
    /// Not written (failed, or the publish was dropped): the key is free
    /// again, and those waiting for it claim it themselves.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.dedupe.state.lock();
        if matches!(state.seen.get(&self.key), Some(Entry::InFlight { claim, .. }) if *claim == self.claim)
        {
            state.seen.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key {
        ("t".to_owned(), k.to_owned())
    }

    #[tokio::test]
    async fn a_key_in_flight_is_waited_for_and_a_released_one_claimed_again() {
        let dedupe = Dedupe::default();
        let window = Duration::from_secs(60);
        let Claim::Mine(first) = dedupe.claim(key("a"), window) else {
            panic!("a new key is mine");
        };
        let Claim::InFlight(rx) = dedupe.claim(key("a"), window) else {
            panic!("a key in flight is waited for");
        };
        first.written(7);
        assert_eq!(Dedupe::outcome(rx).await, Some(7));
        assert!(matches!(dedupe.claim(key("a"), window), Claim::Written(7)));

        let Claim::Mine(failing) = dedupe.claim(key("b"), window) else {
            panic!("a new key is mine");
        };
        let Claim::InFlight(rx) = dedupe.claim(key("b"), window) else {
            panic!("a key in flight is waited for");
        };
        drop(failing);
        assert_eq!(Dedupe::outcome(rx).await, None, "released: claim it again");
        assert!(matches!(dedupe.claim(key("b"), window), Claim::Mine(_)));
    }

    #[test]
    fn written_keys_are_forgotten_after_the_window() {
        let dedupe = Dedupe::default();
        let Claim::Mine(m) = dedupe.claim(key("a"), Duration::ZERO) else {
            panic!("a new key is mine");
        };
        m.written(1);
        assert!(matches!(
            dedupe.claim(key("a"), Duration::ZERO),
            Claim::Mine(_)
        ));
    }
}

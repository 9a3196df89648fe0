//! The checker: what a run's history and the store's final contents
//! prove, property by property, in one [`Report`].
//!
//! Owns the properties (DESIGN.md §6) and how each is decided:
//!
//! - **stored once**: every event a publish answered `Ok` for is stored,
//!   exactly once (by its workload id), and each topic's `seq`s are
//!   `1..=n` without a gap;
//! - **no redelivery after an ack**: no member of a group is handed an
//!   event after an ack of it in that group returned `Ok`;
//! - **per-key order**: within a group, each key's events are first
//!   handed out in `seq` order, and an event is never handed out again
//!   after a later one of its key was (which would mean the later one went
//!   out while it was unsettled);
//! - **effects once**: every event whose handler returned `Ok` has exactly
//!   one stored effect, and no event more than one;
//! - **duplicates**: redeliveries of events not acked yet are allowed and
//!   counted;
//! - **unknown outcomes resolved**: a publish whose outcome was unknown is
//!   stored whole or not at all, never part of a batch; one that returned
//!   an error is not stored unless another publish of it returned `Ok`;
//! - **dead letters with a cause**: each dead letter's event has a handler
//!   that gave it up with a cause, or was handed out `max_deliver` times;
//! - **drained**: when the run ended with the group drained, every stored
//!   event of the group's topics was handed to it.
//!
//! Each violation carries the slice of history that shows it: the records
//! of its event and the faults between the first and the last of them.
//! Running the workload and injecting faults are not this module's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::history::{Outcome, Record};

/// One event as the store holds it at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    pub topic: String,
    /// Its partition on a store that partitions a topic (Kafka), whose
    /// `seq`s count per partition.
    pub partition: Option<u32>,
    pub seq: u64,
    /// The workload's id (its idempotency key).
    pub id: String,
    pub key: Option<String>,
}

/// One dead letter as the store holds it at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDeadLetter {
    pub group: Option<String>,
    /// The workload id of its event.
    pub id: String,
    pub reason: String,
}

/// What the store holds at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Every event of the workload's topics, effects included.
    pub events: Vec<StoredEvent>,
    pub dead_letters: Vec<StoredDeadLetter>,
}

/// What the checker needs to know of the workload.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The topic effects are published on; an effect's id is
    /// [`effect_id`] of its input's.
    pub effect_topic: String,
    /// The group's most deliveries of one event before it is
    /// dead-lettered.
    pub max_deliver: u32,
    /// The group that ran the handler, and the topics it follows.
    pub group: String,
    pub group_topics: Vec<String>,
    /// Whether the run ended only once the group had settled everything.
    pub drained: bool,
}

/// The id of the effect of the event with workload id `input`.
pub fn effect_id(input: &str) -> String {
    format!("effect:{input}")
}

/// A property that does not hold, with the history that shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub property: &'static str,
    pub what: String,
    pub history: Vec<Record>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.property, self.what)?;
        for r in &self.history {
            writeln!(f, "    {}", serde_json::to_string(r).unwrap_or_default())?;
        }
        Ok(())
    }
}

/// What a run proves: its counts, and every violation found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Operations recorded (faults excluded).
    pub operations: usize,
    pub faults: usize,
    /// Events a publish answered `Ok` for.
    pub published: usize,
    /// Acks that returned `Ok`.
    pub acked: usize,
    /// Events handed out again before their ack (allowed).
    pub duplicates: usize,
    /// Publishes of unknown outcome found stored, and not.
    pub unknown_present: usize,
    pub unknown_absent: usize,
    pub dead_letters: usize,
    /// Per fault, the microseconds from its end (its moment, for a kill)
    /// until a publish (if any came after it) and an ack had both returned
    /// `Ok`; `None` when none did.
    pub recovery_us: Vec<Option<u64>>,
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations of `property`.
    pub fn of(&self, property: &str) -> usize {
        self.violations
            .iter()
            .filter(|v| v.property == property)
            .count()
    }

    /// The events a publish answered `Ok` for that are not stored.
    pub fn lost(&self) -> usize {
        self.of(LOST)
    }
}

/// The property names a [`Violation`] carries.
pub const LOST: &str = "lost";
pub const STORED_TWICE: &str = "stored twice";
pub const SEQ_GAP: &str = "seq gap";
pub const REDELIVERED_AFTER_ACK: &str = "redelivered after ack";
pub const ORDER: &str = "per-key order";
pub const EFFECT_MISSING: &str = "effect missing";
pub const EFFECT_TWICE: &str = "effect twice";
pub const HALF_BATCH: &str = "half a batch";
pub const ERROR_BUT_STORED: &str = "error but stored";
pub const DEAD_LETTER_WITHOUT_CAUSE: &str = "dead letter without cause";
pub const NOT_DELIVERED: &str = "never delivered";

/// Check `history` (merged, by time) against `stored`.
pub fn check(history: &[Record], stored: &Stored, spec: &Spec) -> Report {
    let mut c = Checker {
        history,
        report: Report::default(),
    };
    c.count();
    c.stored_once(stored);
    c.deliveries(stored, spec);
    c.effects(stored, spec);
    c.unknowns(stored);
    c.dead_letters(stored, spec);
    c.recovery();
    c.report
}

struct Checker<'a> {
    history: &'a [Record],
    report: Report,
}

impl Checker<'_> {
    fn violation(&mut self, property: &'static str, what: String, id: &str) {
        let history = slice(self.history, id);
        self.report.violations.push(Violation {
            property,
            what,
            history,
        });
    }

    /// Report each of `found` (property, what, the event's id).
    fn flag(&mut self, found: Vec<(&'static str, String, String)>) {
        for (property, what, id) in found {
            self.violation(property, what, &id);
        }
    }

    fn count(&mut self) {
        for r in self.history {
            match r {
                Record::Fault { .. } => self.report.faults += 1,
                Record::Publish {
                    outcome: Outcome::Ok,
                    events,
                    ..
                } => {
                    self.report.operations += 1;
                    self.report.published += events.len();
                }
                Record::Ack {
                    outcome: Outcome::Ok,
                    ..
                } => {
                    self.report.operations += 1;
                    self.report.acked += 1;
                }
                _ => self.report.operations += 1,
            }
        }
    }

    fn stored_once(&mut self, stored: &Stored) {
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for e in &stored.events {
            *copies.entry(e.id.as_str()).or_default() += 1;
        }
        let ok_ids: Vec<String> = self
            .history
            .iter()
            .filter_map(|r| match r {
                Record::Publish {
                    outcome: Outcome::Ok,
                    events,
                    ..
                } => Some(events.iter().map(|e| e.id.clone())),
                _ => None,
            })
            .flatten()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for id in ok_ids {
            match copies.get(id.as_str()).copied().unwrap_or(0) {
                1 => {}
                0 => self.violation(
                    LOST,
                    format!("`{id}` was published (Ok) and is not stored"),
                    &id,
                ),
                n => self.violation(STORED_TWICE, format!("`{id}` is stored {n} times"), &id),
            }
        }
        let mut by_log: BTreeMap<(&str, Option<u32>), Vec<u64>> = BTreeMap::new();
        for e in &stored.events {
            by_log
                .entry((e.topic.as_str(), e.partition))
                .or_default()
                .push(e.seq);
        }
        for ((topic, partition), mut seqs) in by_log {
            seqs.sort_unstable();
            if let Some((i, s)) = seqs.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1) {
                let log = match partition {
                    Some(p) => format!("topic `{topic}` partition {p}"),
                    None => format!("topic `{topic}`"),
                };
                self.report.violations.push(Violation {
                    property: SEQ_GAP,
                    what: format!(
                        "{log} has seq {s} at position {} (expected {})",
                        i + 1,
                        i + 1
                    ),
                    history: Vec::new(),
                });
            }
        }
    }

    /// Redelivery after an ack, per-key order, duplicates, and (drained)
    /// every event of the group handed out.
    fn deliveries(&mut self, stored: &Stored, spec: &Spec) {
        // (group, topic, workload id) → when its first ack returned Ok.
        // An event is named by its id, which is stored once (a `seq`
        // counts per partition where a store partitions a topic).
        let mut acked_at: HashMap<(&str, &str, &str), u64> = HashMap::new();
        for r in self.history {
            if let Record::Ack {
                at,
                group,
                event,
                outcome: Outcome::Ok,
                ..
            } = r
            {
                acked_at
                    .entry((group.as_str(), event.topic.as_str(), event.id.as_str()))
                    .or_insert(*at);
            }
        }
        let mut seen: HashSet<(&str, &str, &str)> = HashSet::new();
        // (group, topic, key) → the greatest seq handed out so far.
        let mut highest: HashMap<(&str, &str, &str), u64> = HashMap::new();
        let mut found = Vec::new();
        for r in self.history {
            let Record::Deliver {
                at,
                group: Some(group),
                event,
                seq,
                ..
            } = r
            else {
                continue;
            };
            let slot = (group.as_str(), event.topic.as_str(), event.id.as_str());
            if let Some(acked) = acked_at.get(&slot) {
                if acked < at {
                    found.push((
                        REDELIVERED_AFTER_ACK,
                        format!(
                            "`{}` (seq {seq}) was handed to group `{group}` after its ack",
                            event.id
                        ),
                        event.id.clone(),
                    ));
                }
            }
            let again = !seen.insert(slot);
            if again {
                self.report.duplicates += 1;
            }
            if let Some(key) = &event.key {
                let top = highest
                    .entry((group.as_str(), event.topic.as_str(), key.as_str()))
                    .or_insert(0);
                if *seq < *top {
                    let how = if again { "again" } else { "for the first time" };
                    found.push((
                        ORDER,
                        format!(
                            "`{}` (key `{key}`, seq {seq}) was handed to group `{group}` {how} after seq {top} of its key",
                            event.id
                        ),
                        event.id.clone(),
                    ));
                }
                *top = (*top).max(*seq);
            }
        }
        if spec.drained {
            for e in &stored.events {
                if spec.group_topics.contains(&e.topic)
                    && !seen.contains(&(spec.group.as_str(), e.topic.as_str(), e.id.as_str()))
                {
                    found.push((
                        NOT_DELIVERED,
                        format!(
                            "`{}` (seq {}) was never handed to group `{}`",
                            e.id, e.seq, spec.group
                        ),
                        e.id.clone(),
                    ));
                }
            }
        }
        self.flag(found);
    }

    fn effects(&mut self, stored: &Stored, spec: &Spec) {
        let mut effects: HashMap<&str, usize> = HashMap::new();
        for e in stored
            .events
            .iter()
            .filter(|e| e.topic == spec.effect_topic)
        {
            *effects.entry(e.id.as_str()).or_default() += 1;
        }
        let mut handled: Vec<&str> = self
            .history
            .iter()
            .filter_map(|r| match r {
                Record::Handle {
                    outcome: Outcome::Ok,
                    event,
                    ..
                } => Some(event.id.as_str()),
                _ => None,
            })
            .collect();
        handled.sort_unstable();
        handled.dedup();
        let mut found = Vec::new();
        for input in handled {
            if !effects.contains_key(effect_id(input).as_str()) {
                found.push((
                    EFFECT_MISSING,
                    format!("`{input}` was handled (Ok) and has no effect"),
                    input.to_string(),
                ));
            }
        }
        for (id, n) in &effects {
            if *n > 1 {
                let input = id.strip_prefix("effect:").unwrap_or(id);
                found.push((
                    EFFECT_TWICE,
                    format!("`{input}` has {n} effects"),
                    input.to_string(),
                ));
            }
        }
        self.flag(found);
    }

    fn unknowns(&mut self, stored: &Stored) {
        let present: HashSet<&str> = stored.events.iter().map(|e| e.id.as_str()).collect();
        let ok: HashSet<&str> = self
            .history
            .iter()
            .filter_map(|r| match r {
                Record::Publish {
                    outcome: Outcome::Ok,
                    events,
                    ..
                } => Some(events.iter().map(|e| e.id.as_str())),
                _ => None,
            })
            .flatten()
            .collect();
        let mut found = Vec::new();
        for r in self.history {
            let Record::Publish {
                outcome, events, ..
            } = r
            else {
                continue;
            };
            let there = events
                .iter()
                .filter(|e| present.contains(e.id.as_str()))
                .count();
            match outcome {
                Outcome::Unknown => {
                    // A later Ok publish of the same events settles them.
                    let settled = events.iter().all(|e| ok.contains(e.id.as_str()));
                    if there == events.len() {
                        self.report.unknown_present += 1;
                    } else if there == 0 {
                        self.report.unknown_absent += 1;
                    } else if !settled {
                        found.push((
                            HALF_BATCH,
                            format!(
                                "{there} of a batch of {} of unknown outcome are stored",
                                events.len()
                            ),
                            events[0].id.clone(),
                        ));
                    }
                }
                Outcome::Error => {
                    for e in events {
                        if present.contains(e.id.as_str()) && !ok.contains(e.id.as_str()) {
                            found.push((
                                ERROR_BUT_STORED,
                                format!(
                                    "`{}` is stored though its publish returned an error",
                                    e.id
                                ),
                                e.id.clone(),
                            ));
                        }
                    }
                }
                Outcome::Ok => {}
            }
        }
        self.flag(found);
    }

    fn dead_letters(&mut self, stored: &Stored, spec: &Spec) {
        self.report.dead_letters = stored.dead_letters.len();
        let mut found = Vec::new();
        for d in &stored.dead_letters {
            let group = d.group.as_deref().unwrap_or_default();
            let given_up = self.history.iter().any(|r| {
                matches!(r, Record::Handle { group: g, event, outcome: Outcome::Error, cause: Some(_), .. }
                    if g == group && event.id == d.id)
            });
            let deliveries = self
                .history
                .iter()
                .filter(|r| {
                    matches!(r, Record::Deliver { group: Some(g), event, .. } if g == group && event.id == d.id)
                })
                .count();
            if !given_up && deliveries < spec.max_deliver as usize {
                found.push((
                    DEAD_LETTER_WITHOUT_CAUSE,
                    format!(
                        "`{}` was dead-lettered in group `{group}` ({}) with no handler giving it up and {deliveries} of {} deliveries",
                        d.id, d.reason, spec.max_deliver
                    ),
                    d.id.clone(),
                ));
            }
        }
        self.flag(found);
    }

    fn recovery(&mut self) {
        let first_ok_after = |t: u64, publish: bool| {
            self.history.iter().find_map(|r| match r {
                Record::Publish {
                    at,
                    outcome: Outcome::Ok,
                    ..
                } if publish && *at > t => Some(*at),
                Record::Ack {
                    at,
                    outcome: Outcome::Ok,
                    ..
                } if !publish && *at > t => Some(*at),
                _ => None,
            })
        };
        self.report.recovery_us = self
            .history
            .iter()
            .filter_map(|r| match r {
                Record::Fault { at, until, .. } => Some(until.unwrap_or(*at)),
                _ => None,
            })
            .map(|t| {
                // A fault that ends after the publishers stopped recovers
                // with the group's next ack.
                let acked = first_ok_after(t, false)?;
                let published = first_ok_after(t, true).unwrap_or(acked);
                Some(published.max(acked) - t)
            })
            .collect();
    }
}

/// The records of event `id`, and the faults between the first and the
/// last of them.
fn slice(history: &[Record], id: &str) -> Vec<Record> {
    let mine: Vec<usize> = (0..history.len())
        .filter(|i| history[*i].concerns(id))
        .collect();
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
        return Vec::new();
    };
    history[*first..=*last]
        .iter()
        .filter(|r| r.concerns(id) || matches!(r, Record::Fault { .. }))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventRef;

    const GROUP: &str = "g";

    fn ev(id: &str, key: &str) -> EventRef {
        EventRef {
            topic: "orders".into(),
            key: Some(key.into()),
            id: id.into(),
        }
    }

    fn publish(at: u64, events: &[(&str, &str)], outcome: Outcome) -> Record {
        Record::Publish {
            at,
            process: "pub-1".into(),
            events: events.iter().map(|(id, k)| ev(id, k)).collect(),
            outcome,
            seqs: Vec::new(),
            error: None,
        }
    }

    fn deliver(at: u64, id: &str, key: &str, seq: u64) -> Record {
        Record::Deliver {
            at,
            process: "member-1".into(),
            group: Some(GROUP.into()),
            event: ev(id, key),
            seq,
            attempt: 1,
        }
    }

    fn handle(at: u64, id: &str, key: &str, seq: u64, outcome: Outcome) -> Record {
        Record::Handle {
            at,
            process: "member-1".into(),
            group: GROUP.into(),
            event: ev(id, key),
            seq,
            outcome,
            effect: (outcome == Outcome::Ok).then(|| effect_id(id)),
            cause: (outcome == Outcome::Error).then(|| "poison".into()),
        }
    }

    fn ack(at: u64, id: &str, key: &str, seq: u64) -> Record {
        Record::Ack {
            at,
            process: "member-1".into(),
            group: GROUP.into(),
            event: ev(id, key),
            seq,
            outcome: Outcome::Ok,
        }
    }

    fn stored(events: &[(&str, &str, u64)], effects: &[&str]) -> Stored {
        let mut out: Vec<StoredEvent> = events
            .iter()
            .map(|(id, key, seq)| StoredEvent {
                topic: "orders".into(),
                partition: None,
                seq: *seq,
                id: (*id).into(),
                key: Some((*key).into()),
            })
            .collect();
        out.extend(effects.iter().enumerate().map(|(i, input)| StoredEvent {
            topic: "effects".into(),
            partition: None,
            seq: i as u64 + 1,
            id: effect_id(input),
            key: None,
        }));
        Stored {
            events: out,
            dead_letters: Vec::new(),
        }
    }

    fn spec() -> Spec {
        Spec {
            effect_topic: "effects".into(),
            max_deliver: 3,
            group: GROUP.into(),
            group_topics: vec!["orders".into()],
            drained: true,
        }
    }

    /// One event through its whole life, and a second redelivered once
    /// after a kill before its ack.
    fn clean_history() -> Vec<Record> {
        vec![
            publish(1, &[("a", "k"), ("b", "k")], Outcome::Ok),
            deliver(2, "a", "k", 1),
            handle(3, "a", "k", 1, Outcome::Ok),
            ack(4, "a", "k", 1),
            deliver(5, "b", "k", 2),
            Record::Fault {
                at: 6,
                fault: "kill member-1".into(),
                until: None,
            },
            deliver(7, "b", "k", 2),
            handle(8, "b", "k", 2, Outcome::Ok),
            ack(9, "b", "k", 2),
            publish(10, &[("c", "j")], Outcome::Ok),
            deliver(11, "c", "j", 3),
            handle(12, "c", "j", 3, Outcome::Ok),
            ack(13, "c", "j", 3),
        ]
    }

    #[test]
    fn a_clean_run_has_no_violation_and_counts_its_duplicate_and_recovery() {
        let report = check(
            &clean_history(),
            &stored(
                &[("a", "k", 1), ("b", "k", 2), ("c", "j", 3)],
                &["a", "b", "c"],
            ),
            &spec(),
        );
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert_eq!(
            (report.published, report.acked, report.duplicates),
            (3, 3, 1)
        );
        assert_eq!(
            report.recovery_us,
            [Some(4)],
            "fault at 6, the next ack at 9, the next publish at 10"
        );
    }

    #[test]
    fn each_property_is_caught_with_its_history() {
        let cases: Vec<(&str, Vec<Record>, Stored)> = vec![
            (
                LOST,
                clean_history(),
                stored(&[("a", "k", 1), ("c", "j", 2)], &["a", "b", "c"]),
            ),
            (
                STORED_TWICE,
                clean_history(),
                stored(
                    &[("a", "k", 1), ("b", "k", 2), ("c", "j", 3), ("c", "j", 4)],
                    &["a", "b", "c"],
                ),
            ),
            (
                SEQ_GAP,
                clean_history(),
                stored(
                    &[("a", "k", 1), ("b", "k", 2), ("c", "j", 4)],
                    &["a", "b", "c"],
                ),
            ),
            (
                REDELIVERED_AFTER_ACK,
                [clean_history(), vec![deliver(20, "a", "k", 1)]].concat(),
                stored(
                    &[("a", "k", 1), ("b", "k", 2), ("c", "j", 3)],
                    &["a", "b", "c"],
                ),
            ),
            (
                ORDER,
                vec![
                    publish(1, &[("a", "k"), ("b", "k")], Outcome::Ok),
                    deliver(2, "b", "k", 2),
                    deliver(3, "a", "k", 1),
                ],
                stored(&[("a", "k", 1), ("b", "k", 2)], &[]),
            ),
            (
                EFFECT_MISSING,
                clean_history(),
                stored(&[("a", "k", 1), ("b", "k", 2), ("c", "j", 3)], &["a", "c"]),
            ),
            (
                EFFECT_TWICE,
                clean_history(),
                stored(
                    &[("a", "k", 1), ("b", "k", 2), ("c", "j", 3)],
                    &["a", "b", "b", "c"],
                ),
            ),
            (
                HALF_BATCH,
                vec![publish(1, &[("x", "k"), ("y", "k")], Outcome::Unknown)],
                stored(&[("x", "k", 1)], &[]),
            ),
            (
                ERROR_BUT_STORED,
                vec![publish(1, &[("x", "k")], Outcome::Error)],
                stored(&[("x", "k", 1)], &[]),
            ),
            (
                NOT_DELIVERED,
                vec![publish(1, &[("x", "k")], Outcome::Ok)],
                stored(&[("x", "k", 1)], &[]),
            ),
        ];
        for (property, history, contents) in cases {
            let report = check(&history, &contents, &spec());
            assert_eq!(
                report.of(property),
                1,
                "{property}: {:#?}",
                report.violations
            );
            let v = report
                .violations
                .iter()
                .find(|v| v.property == property)
                .unwrap();
            if property != SEQ_GAP {
                assert!(!v.history.is_empty(), "{property} shows its history");
            }
        }
    }

    #[test]
    fn seqs_count_per_partition_where_a_store_partitions_a_topic() {
        let history = vec![publish(
            1,
            &[("a", "k"), ("b", "j"), ("c", "k")],
            Outcome::Ok,
        )];
        let on = |partition: u32, id: &str, key: &str, seq: u64| StoredEvent {
            topic: "orders".into(),
            partition: Some(partition),
            seq,
            id: id.into(),
            key: Some(key.into()),
        };
        let mut spec = spec();
        spec.drained = false;
        let mut contents = Stored {
            events: vec![on(0, "a", "k", 1), on(1, "b", "j", 1), on(0, "c", "k", 2)],
            dead_letters: Vec::new(),
        };
        assert_eq!(check(&history, &contents, &spec).of(SEQ_GAP), 0);
        contents.events[2].seq = 3;
        let report = check(&history, &contents, &spec);
        assert_eq!(report.of(SEQ_GAP), 1, "{:#?}", report.violations);
        assert!(report.violations[0].what.contains("partition 0"));
    }

    #[test]
    fn a_dead_letter_needs_a_handler_giving_up_or_max_deliveries() {
        let letter = |id: &str| StoredDeadLetter {
            group: Some(GROUP.into()),
            id: id.into(),
            reason: "gave up".into(),
        };
        let history = vec![
            publish(1, &[("p", "k"), ("m", "j"), ("n", "i")], Outcome::Ok),
            deliver(2, "p", "k", 1),
            handle(3, "p", "k", 1, Outcome::Error),
            deliver(4, "m", "j", 2),
            deliver(5, "m", "j", 2),
            deliver(6, "m", "j", 2),
            deliver(7, "n", "i", 3),
        ];
        let mut contents = stored(&[("p", "k", 1), ("m", "j", 2), ("n", "i", 3)], &[]);
        contents.dead_letters = vec![letter("p"), letter("m"), letter("n")];
        let report = check(&history, &contents, &spec());
        assert_eq!(report.dead_letters, 3);
        assert_eq!(
            report.of(DEAD_LETTER_WITHOUT_CAUSE),
            1,
            "{:#?}",
            report.violations
        );
        assert!(report.violations[0].what.contains("`n`"));
    }

    #[test]
    fn unknown_publishes_are_resolved_present_or_absent() {
        let history = vec![
            publish(1, &[("x", "k")], Outcome::Unknown),
            publish(2, &[("y", "k")], Outcome::Unknown),
            publish(3, &[("z", "k"), ("w", "k")], Outcome::Unknown),
            publish(4, &[("z", "k"), ("w", "k")], Outcome::Ok),
        ];
        let mut s = spec();
        s.drained = false;
        let report = check(
            &history,
            &stored(&[("x", "k", 1), ("z", "k", 2), ("w", "k", 3)], &[]),
            &s,
        );
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert_eq!((report.unknown_present, report.unknown_absent), (2, 1));
    }
}

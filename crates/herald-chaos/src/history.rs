//! The history of a run: every operation each process of the workload
//! did, with its outcome, one JSON object per line (`Record`), as
//! Jepsen's histories are. Processes append to their own files; a run's
//! history is all of them merged by time ([`merge`]).
//!
//! Owns the record format and reading it back. What a record means for
//! the guarantees is [`check`](crate::check)'s.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// How an operation ended, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It returned `Ok`.
    Ok,
    /// It returned an error that says it did not happen.
    Error,
    /// It timed out or its process died waiting: it may or may not have
    /// happened.
    Unknown,
}

/// One event as the workload names it: its topic, key and the id the
/// publisher gave it (the idempotency key too, so a retry is the same
/// event).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventRef {
    pub topic: String,
    pub key: Option<String>,
    /// The workload's id of the event (its idempotency key).
    pub id: String,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A publish of `events` (one, or a batch) ended as `outcome`; `seqs`
    /// are the stored sequence numbers when it is `Ok`.
    Publish {
        /// Microseconds since the run's start.
        at: u64,
        process: String,
        events: Vec<EventRef>,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seqs: Vec<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A member of `group` (a subscriber when `None`) was handed an event.
    Deliver {
        at: u64,
        process: String,
        group: Option<String>,
        event: EventRef,
        seq: u64,
        attempt: u32,
    },
    /// The member's handler of an event ended as `outcome`: `Ok` after
    /// it published the event's effect (whose id is `effect`).
    Handle {
        at: u64,
        process: String,
        group: String,
        event: EventRef,
        seq: u64,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<String>,
        /// Why it failed, for a handler that gives an event up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// An ack of a delivery ended as `outcome`.
    Ack {
        at: u64,
        process: String,
        group: String,
        event: EventRef,
        seq: u64,
        outcome: Outcome,
    },
    /// A fault the harness injected at `at`; one that lasts (a pause, a
    /// blackhole, a store down) ended at `until`.
    Fault {
        at: u64,
        fault: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
}

impl Record {
    /// When it happened, in microseconds since the run's start.
    pub fn at(&self) -> u64 {
        match self {
            Record::Publish { at, .. }
            | Record::Deliver { at, .. }
            | Record::Handle { at, .. }
            | Record::Ack { at, .. }
            | Record::Fault { at, .. } => *at,
        }
    }

    /// Whether it concerns the event with workload id `id`.
    pub fn concerns(&self, id: &str) -> bool {
        match self {
            Record::Publish { events, .. } => events.iter().any(|e| e.id == id),
            Record::Deliver { event, .. }
            | Record::Handle { event, .. }
            | Record::Ack { event, .. } => event.id == id,
            Record::Fault { .. } => false,
        }
    }
}

/// Append `record` to `out` as one line.
pub fn write(out: &mut impl Write, record: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// The records of one history file. A last line cut short by a kill
/// (`kill -9` mid-write) is dropped; any other line that does not parse
/// is an error naming its number.
pub fn read(input: impl BufRead) -> Result<Vec<Record>, HistoryError> {
    let lines: Vec<String> = input.lines().collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => out.push(record),
            Err(_) if n + 1 == lines.len() => {}
            Err(e) => {
                return Err(HistoryError::Line {
                    line: n + 1,
                    error: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Several processes' histories as one, by time (stable: a process's own
/// order is kept for records of the same microsecond).
pub fn merge(histories: impl IntoIterator<Item = Vec<Record>>) -> Vec<Record> {
    let mut all: Vec<Record> = histories.into_iter().flatten().collect();
    all.sort_by_key(Record::at);
    all
}

/// A history that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line} is not a record: {error}")]
    Line { line: usize, error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(at: u64, id: &str) -> Record {
        Record::Publish {
            at,
            process: "p1".into(),
            events: vec![EventRef {
                topic: "t".into(),
                key: Some("k".into()),
                id: id.into(),
            }],
            outcome: Outcome::Ok,
            seqs: vec![1],
            error: None,
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_dropped() {
        let mut out = Vec::new();
        write(&mut out, &publish(5, "e1")).unwrap();
        write(
            &mut out,
            &Record::Fault {
                at: 7,
                fault: "pause member-0".into(),
                until: Some(8),
            },
        )
        .unwrap();
        out.extend_from_slice(br#"{"op":"publish","at":9,"proc"#);
        let records = read(&out[..]).unwrap();
        assert_eq!(
            records,
            [
                publish(5, "e1"),
                Record::Fault {
                    at: 7,
                    fault: "pause member-0".into(),
                    until: Some(8),
                }
            ]
        );
    }

    #[test]
    fn a_bad_line_before_the_last_is_an_error_with_its_number() {
        let text = "{\"op\":\"fault\",\"at\":1,\"fault\":\"x\"}\nnot json\n{\"op\":\"fault\",\"at\":2,\"fault\":\"y\"}\n";
        let e = read(text.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn histories_merge_by_time() {
        let merged = merge([
            vec![publish(3, "a"), publish(9, "b")],
            vec![publish(5, "c")],
        ]);
        let times: Vec<u64> = merged.iter().map(Record::at).collect();
        assert_eq!(times, [3, 5, 9]);
        assert!(merged[1].concerns("c"));
    }
}

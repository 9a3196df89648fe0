//! How herald's things are named in NATS: subjects, stream names, consumer
//! names.
//!
//! Owns the layout under a subject prefix `P` (default `herald.local`):
//! - topic `orders.placed` is the stream `S_T_orders~placed` (`S` is `P`
//!   with `.` as `_`; a name too long for the server ends in a hash
//!   instead) on two subjects: `P.$part.<n>.orders.placed`, where herald
//!   publishes an event, in partition `n` of the topic's partitions (a
//!   count the stream's description keeps, fixed when it is made) by a hash
//!   of its key (of its id when it has none), so all of one key's events
//!   share a subject and a consumer filtered to a partition sees each of
//!   its keys whole and in order; and `P.orders.placed`, the topic's plain
//!   subject, where plain NATS clients publish (and herald published
//!   before partitions). The two never overlap another topic's: a topic's
//!   subjects differ from another's in their number of tokens or in a
//!   token;
//! - a consumer group is a durable consumer named for the group (`g_` and
//!   the name, bytes outside `[A-Za-z0-9_-]` as `~xx`) on each topic stream
//!   it follows; its leader's lease is the last message on `P.$lease.<consumer>` in stream
//!   `S_LEADERS`; the group's record (its name and patterns) is the last
//!   message on `P.$groups.<consumer>` in stream `S_GROUPS`;
//! - commands are requests on `P.$cmd.<topic>`;
//! - the schema registry's changes (contracts) are the messages on
//!   `P.$schemas` of stream `S_SCHEMAS`;
//! - the ids a handler group processed (consumer-side dedupe) are the
//!   subjects `P.$processed.<window in ms>.<group>.<id>` (the group's bytes
//!   outside `[A-Za-z0-9_-]` as `~xx`) of the stream
//!   `S_PROCESSED_<window in ms>`;
//! - dead letters are the stream `S_DLQ` (or the name
//!   `HERALD_DEAD_LETTERS` gives, with `.` as `_`) on subjects
//!   `P.$dlq.<topic>` (topic segments never start with `$`, so these never
//!   collide);
//!
//! It does not create anything: the modules that use a name make what it
//! names (`log` the topic streams, `dead_letters` the dead-letter stream,
//! `leader_lease`, `group` and `group_record` theirs). It imports only
//! the leaf `config` (for `MAX_PARTITIONS`).

use herald::backend::{fnv1a, partition_of};
use herald::Topic;

use crate::config::MAX_PARTITIONS;

/// Longest stream or consumer name herald makes (the server keeps each in a
/// directory of that name).
const MAX_NAME: usize = 200;

/// Names under one subject prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    streams: String,
    /// The dead-letter stream's name.
    dlq: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        let streams = prefix.replace('.', "_");
        Names {
            prefix: prefix.to_owned(),
            dlq: format!("{streams}_DLQ"),
            streams,
        }
    }

    /// Name the dead-letter stream `name` (`.` as `_`, which stream names
    /// cannot hold) instead of `S_DLQ`, when one is given.
    pub(crate) fn dead_letters(mut self, name: Option<&str>) -> Names {
        if let Some(name) = name {
            self.dlq = name.replace('.', "_");
        }
        self
    }

    /// The subject prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject of `topic`.
    pub(crate) fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    /// The subject herald publishes an event of `topic`, a topic of
    /// `partitions` partitions, on: partition `partition_of(by, partitions)`,
    /// `by` being the event's key, or its id when it has none.
    pub(crate) fn event_subject(&self, topic: &str, partitions: u32, by: &[u8]) -> String {
        self.partition_subject(topic, partition_of(by, partitions))
    }

    /// What the description of `topic`'s stream says: the topic and its
    /// partitions.
    pub(crate) fn stream_description(&self, topic: &str, partitions: u32) -> String {
        format!("herald topic `{topic}`; partitions: {partitions}")
    }

    /// The subject of partition `n` of `topic`.
    pub(crate) fn partition_subject(&self, topic: &str, n: u32) -> String {
        format!("{}.$part.{n}.{topic}", self.prefix)
    }

    /// The partition of a topic subject: `Some(n)` for partition `n`,
    /// `None` for the plain subject.
    pub(crate) fn partition_of_subject(&self, subject: &str) -> Option<u32> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".$part.")?;
        rest.split_once('.')?
            .0
            .parse()
            .ok()
            .filter(|n| *n < MAX_PARTITIONS)
    }

    /// Every partition subject of `topic` (a subject of its stream).
    pub(crate) fn partition_subjects(&self, topic: &str) -> String {
        format!("{}.$part.*.{topic}", self.prefix)
    }

    /// The subjects of `topic`'s stream: the plain one and the partitions.
    pub(crate) fn stream_subjects(&self, topic: &str) -> Vec<String> {
        vec![self.subject(topic), self.partition_subjects(topic)]
    }

    /// The subject filter of a topic pattern (`*` and `>` mean the same in
    /// NATS).
    pub(crate) fn filter(&self, pattern: &str) -> String {
        self.subject(pattern)
    }

    /// The topic of `subject`, when it is a topic subject under the prefix,
    /// plain or of a partition.
    pub(crate) fn topic_of(&self, subject: &str) -> Option<Topic> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let rest = match rest.strip_prefix("$part.") {
            Some(part) => {
                let (n, topic) = part.split_once('.')?;
                n.parse::<u32>().ok().filter(|n| *n < MAX_PARTITIONS)?;
                topic
            }
            None => rest,
        };
        Topic::new(rest).ok()
    }

    /// The stream of `topic`.
    pub(crate) fn stream(&self, topic: &str) -> String {
        bounded(format!("{}_T_{}", self.streams, topic.replace('.', "~")))
    }

    /// The dead-letter stream.
    pub(crate) fn dlq_stream(&self) -> String {
        self.dlq.clone()
    }

    /// The subject of a dead letter from `topic`.
    pub(crate) fn dlq_subject(&self, topic: &str) -> String {
        format!("{}.$dlq.{topic}", self.prefix)
    }

    /// The stream of leases (consumer groups' leaders).
    pub(crate) fn leases_stream(&self) -> String {
        format!("{}_LEADERS", self.streams)
    }

    /// The subject of lease `name`.
    pub(crate) fn lease_subject(&self, name: &str) -> String {
        format!("{}.$lease.{name}", self.prefix)
    }

    /// The stream of consumer groups' records.
    pub(crate) fn groups_stream(&self) -> String {
        format!("{}_GROUPS", self.streams)
    }

    /// The subject of the record of group consumer `consumer`.
    pub(crate) fn group_subject(&self, consumer: &str) -> String {
        format!("{}.$groups.{consumer}", self.prefix)
    }

    /// Every group record subject.
    pub(crate) fn group_subjects(&self) -> String {
        format!("{}.$groups.>", self.prefix)
    }

    /// The stream of the schema registry's changes.
    pub(crate) fn schemas_stream(&self) -> String {
        format!("{}_SCHEMAS", self.streams)
    }

    /// The one subject of the schema registry's changes.
    pub(crate) fn schemas_subject(&self) -> String {
        format!("{}.$schemas", self.prefix)
    }

    /// The stream of leaders' handover notes.
    pub(crate) fn handover_stream(&self) -> String {
        format!("{}_HANDOVERS", self.streams)
    }

    /// The subject of the handover note of group consumer `consumer`.
    pub(crate) fn handover_subject(&self, consumer: &str) -> String {
        format!("{}.$handover.{consumer}", self.prefix)
    }

    /// Every handover subject.
    pub(crate) fn handover_subjects(&self) -> String {
        format!("{}.$handover.>", self.prefix)
    }

    /// The subject command `topic`'s handlers answer on.
    pub(crate) fn command_subject(&self, topic: &str) -> String {
        format!("{}.$cmd.{topic}", self.prefix)
    }

    /// The stream of large payloads' chunks.
    pub(crate) fn payloads_stream(&self) -> String {
        format!("{}_PAYLOADS", self.streams)
    }

    /// The subject of chunk `n` of parked payload `id`.
    pub(crate) fn payload_subject(&self, id: &str, n: usize) -> String {
        format!("{}.$payload.{id}.{n}", self.prefix)
    }

    /// Every chunk subject.
    pub(crate) fn payload_subjects(&self) -> String {
        format!("{}.$payload.>", self.prefix)
    }

    /// Every lease subject.
    pub(crate) fn lease_subjects(&self) -> String {
        format!("{}.$lease.>", self.prefix)
    }

    /// The durable consumer of consumer group `group`: its bytes outside
    /// `[A-Za-z0-9_-]` escaped as `~xx`.
    pub(crate) fn consumer(&self, group: &str) -> String {
        let mut name = String::with_capacity(group.len() + 2);
        name.push_str("g_");
        for b in group.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                name.push(b as char);
            } else {
                name.push_str(&format!("~{b:02x}"));
            }
        }
        bounded(name)
    }

    /// The stream of the ids processed within `window_ms`.
    pub(crate) fn processed_stream(&self, window_ms: u128) -> String {
        bounded(format!("{}_PROCESSED_{window_ms}", self.streams))
    }

    /// The subjects of that stream.
    pub(crate) fn processed_subjects(&self, window_ms: u128) -> String {
        format!("{}.$processed.{window_ms}.>", self.prefix)
    }

    /// The subject recording that `group` processed message `id`.
    pub(crate) fn processed_subject(
        &self,
        window_ms: u128,
        group: &str,
        id: &uuid::Uuid,
    ) -> String {
        let group = &self.consumer(group)["g_".len()..];
        format!(
            "{}.$processed.{window_ms}.{group}.{}",
            self.prefix,
            id.simple()
        )
    }

    /// The durable consumer of group consumer `consumer` reading one part
    /// of a topic: partition `Some(n)` (`~p<n>`) or the plain subject
    /// (`None`, `~pp`). `~` then a letter never comes of escaping a group
    /// name, which writes `~` and two hex digits.
    pub(crate) fn part_consumer(&self, consumer: &str, partition: Option<u32>) -> String {
        match partition {
            Some(n) => bounded(format!("{consumer}~p{n}")),
            None => bounded(format!("{consumer}~pp")),
        }
    }

    /// The subject of member `member`'s presence in group consumer
    /// `consumer` (in the lease stream, so it ages out with the leases).
    pub(crate) fn member_subject(&self, consumer: &str, member: &str) -> String {
        format!("{}.$lease.{consumer}~m.{member}", self.prefix)
    }

    /// Every member presence subject of group consumer `consumer`.
    pub(crate) fn member_subjects(&self, consumer: &str) -> String {
        format!("{}.$lease.{consumer}~m.*", self.prefix)
    }

    /// Every dead-letter subject.
    pub(crate) fn dlq_subjects(&self) -> String {
        format!("{}.$dlq.>", self.prefix)
    }
}

/// `name`, or when it is too long its start and a hash of the whole.
fn bounded(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut cut = MAX_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:016x}", &name[..cut], fnv1a(name.as_bytes()))
}

/// The partitions a topic stream's description gives, `None` for a
/// stream made before partitions.
pub(crate) fn partitions_in(description: Option<&str>) -> Option<u32> {
    let n = description?.rsplit_once("; partitions: ")?.1.parse().ok()?;
    (1..=MAX_PARTITIONS).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let n = Names::new("shop.prod");
        assert_eq!(n.subject("orders.placed"), "shop.prod.orders.placed");
        assert_eq!(n.stream("orders.placed"), "shop_prod_T_orders~placed");
        assert_eq!(
            n.dlq_subject("orders.placed"),
            "shop.prod.$dlq.orders.placed"
        );
        assert_eq!(
            n.topic_of("shop.prod.orders.placed").unwrap().as_str(),
            "orders.placed"
        );
        assert!(n.topic_of("shop.prod.$dlq.orders").is_none());
        let keyed = n.event_subject("orders.placed", 8, b"customer-7");
        assert_eq!(
            keyed,
            format!(
                "shop.prod.$part.{}.orders.placed",
                partition_of(b"customer-7", 8)
            )
        );
        assert_eq!(n.topic_of(&keyed).unwrap().as_str(), "orders.placed");
        assert_eq!(
            n.event_subject("orders.placed", 1, b"any"),
            "shop.prod.$part.0.orders.placed"
        );
        let described = n.stream_description("orders.placed", 12);
        assert_eq!(partitions_in(Some(&described)), Some(12));
        assert_eq!(partitions_in(None), None);
        assert_eq!(partitions_in(Some("herald topic `x`; partitions: 0")), None);
        assert_eq!(
            n.stream_subjects("orders.placed"),
            ["shop.prod.orders.placed", "shop.prod.$part.*.orders.placed"]
        );
        assert!(n.topic_of("shop.prod.$part.*.orders").is_none());
        assert!(n.topic_of("shop.prod.$part.64.orders").is_none());
        assert!(n.topic_of("shop.prod.$part.orders").is_none());
        assert_eq!(
            n.partition_of_subject(&n.partition_subject("a.b", 3)),
            Some(3)
        );
        assert_eq!(n.partition_of_subject("shop.prod.a.b"), None);
        assert_eq!(n.part_consumer("g_x", Some(3)), "g_x~p3");
        assert_eq!(n.part_consumer("g_x", None), "g_x~pp");
        assert_eq!(
            n.member_subject("g_x", "7-ab"),
            "shop.prod.$lease.g_x~m.7-ab"
        );
        assert!(n.topic_of("shop.prodx.orders").is_none());
        assert_eq!(n.consumer("billing workers/2"), "g_billing~20workers~2f2");
        assert_eq!(n.leases_stream(), "shop_prod_LEADERS");
        assert_eq!(n.lease_subject("g_x"), "shop.prod.$lease.g_x");
        assert_eq!(n.group_subject("g_x"), "shop.prod.$groups.g_x");
    }

    #[test]
    fn keys_spread_over_every_partition_and_each_stays_in_one() {
        let mut seen = [0u32; 8];
        for k in 0..8_000 {
            let key = format!("key-{k}");
            let p = partition_of(key.as_bytes(), 8);
            assert_eq!(p, partition_of(key.as_bytes(), 8));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1_300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn distinct_topics_get_distinct_bounded_streams() {
        let n = Names::new("herald.local");
        assert_ne!(n.stream("a_b.c"), n.stream("a.b_c"));
        let long_a = format!("{}.a", "x".repeat(250));
        let long_b = format!("{}.b", "x".repeat(250));
        let (a, b) = (n.stream(&long_a), n.stream(&long_b));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME);
        assert_ne!(a, b);
        assert_eq!(a, n.stream(&long_a));
        assert!(n.consumer(&"é".repeat(200)).len() <= MAX_NAME);
    }
}

//! How herald's things are named in NATS: subjects, stream names, consumer
//! names.
//!
//! Owns the layout under a subject prefix `P` (default `herald.local`):
//! - topic `orders.placed` is subject `P.orders.placed`, the only subject of
//!   its own stream `S_T_orders~placed` (`S` is `P` with `.` as `_`; a name
//!   too long for the server ends in a hash instead);
//! - a consumer group is a durable consumer named for the group (`g_` and
//!   the name, bytes outside `[A-Za-z0-9_-]` as `~xx`) on each topic stream
//!   it follows; its leader's lease is the last message on `P.$lease.<consumer>` in stream
//!   `S_LEADERS`; the group's record (its name and patterns) is the last
//!   message on `P.$groups.<consumer>` in stream `S_GROUPS`;
//! - commands are requests on `P.$cmd.<topic>`;
//! - dead letters are the stream `S_DLQ` on subjects `P.$dlq.<topic>`
//!   (topic segments never start with `$`, so these never collide);
//!
//! It does not create anything: the modules that use a name make what it
//! names (`log` the topic streams, `dead_letters` the dead-letter stream,
//! `leader_lease`, `group` and `group_record` theirs). A leaf: it imports
//! nothing of the crate.

use herald::Topic;

/// Longest stream or consumer name herald makes (the server keeps each in a
/// directory of that name).
const MAX_NAME: usize = 200;

/// Names under one subject prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    streams: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
            streams: prefix.replace('.', "_"),
        }
    }

    /// The subject prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject of `topic`.
    pub(crate) fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    /// The subject filter of a topic pattern (`*` and `>` mean the same in
    /// NATS).
    pub(crate) fn filter(&self, pattern: &str) -> String {
        self.subject(pattern)
    }

    /// The topic of `subject`, when it is a topic subject under the prefix.
    pub(crate) fn topic_of(&self, subject: &str) -> Option<Topic> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        Topic::new(rest).ok()
    }

    /// The stream of `topic`.
    pub(crate) fn stream(&self, topic: &str) -> String {
        bounded(format!("{}_T_{}", self.streams, topic.replace('.', "~")))
    }

    /// The dead-letter stream.
    pub(crate) fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.streams)
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

/// FNV-1a, 64 bits: a hash every process computes alike.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
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
        assert!(n.topic_of("shop.prodx.orders").is_none());
        assert_eq!(n.consumer("billing workers/2"), "g_billing~20workers~2f2");
        assert_eq!(n.leases_stream(), "shop_prod_LEADERS");
        assert_eq!(n.lease_subject("g_x"), "shop.prod.$lease.g_x");
        assert_eq!(n.group_subject("g_x"), "shop.prod.$groups.g_x");
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

//! herald and plain rdkafka clients read each other's records: the envelope
//! is Kafka headers (`message_id`, `correlation_id`, …) and the payload is
//! the value. A record with malformed herald headers is dead-lettered by a
//! group with source `decode`, never dropped.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::dead_letter::FailureSource;
use herald::{Bus, ErrorCode, Message, Payload, Priority, StartPosition};
use herald_kafka::KafkaStore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

fn plain_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .set("batch.num.messages", support::batch_messages().to_string())
        .create()
        .unwrap()
}

#[tokio::test]
async fn a_plain_consumer_reads_herald_events() {
    let config = support::fresh_config().partitions(1);
    let kafka_topic = config.kafka_topic("interop.out");
    let bus = Bus::new(KafkaStore::open(config).await.unwrap());
    let sent = Message::new(
        "interop.out",
        Payload::json(&serde_json::json!({"n": 1})).unwrap(),
    )
    .key("acct-1")
    .priority(Priority::High)
    .header("destination", "billing")
    .header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    bus.publish(sent).await.unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .set("group.id", "plain-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&kafka_topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let record = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            assert!(std::time::Instant::now() < deadline, "no record");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                break m.unwrap().detach();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(record.payload(), Some(&br#"{"n":1}"#[..]));
    assert_eq!(record.key(), Some(&b"acct-1"[..]));
    let headers: Vec<(String, String)> = record
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("header {n} in {headers:?}"))
    };
    let id = get("message_id");
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(get("correlation_id"), id, "a fresh correlation is the id");
    assert_eq!(get("event_type"), "interop.out");
    assert_eq!(get("partition_key"), "acct-1");
    assert_eq!(get("priority"), "high");
    assert_eq!(get("content_type"), "application/json");
    assert_eq!(get("destination"), "billing");
    assert_eq!(get("trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(get("span_id"), "00f067aa0ba902b7");
    assert_eq!(get("retry_count"), "0");
    assert!(get("timestamp").ends_with('Z'));
    assert!(headers.iter().all(|(k, _)| k != "kafka_partition"));
}

#[tokio::test]
async fn herald_consumes_what_a_plain_producer_sends() {
    let config = support::fresh_config().partitions(1);
    let kafka_topic = config.kafka_topic("interop.in");
    support::create_topic(&kafka_topic).await;
    let bus = Bus::new(KafkaStore::open(config).await.unwrap());
    let mut sub = bus
        .subscribe_raw("interop.in")
        .group("readers")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let producer = plain_producer();
    let cause = uuid::Uuid::now_v7();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "causation_id",
            value: Some(cause.to_string().as_bytes()),
        })
        .insert(Header {
            key: "priority",
            value: Some(b"critical".as_slice()),
        })
        .insert(Header {
            key: "operation_name",
            value: Some(b"charge".as_slice()),
        });
    producer
        .send(
            FutureRecord::to(&kafka_topic)
                .key("acct-9")
                .payload(r#"{"amount":5}"#)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&kafka_topic).payload(&b"\xffraw"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let first = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.seq(), Some(1));
    assert_eq!(first.key(), Some("acct-9"), "the record key orders it");
    assert_eq!(first.causation_id(), Some(cause));
    assert_eq!(first.priority(), Priority::Critical);
    assert_eq!(first.envelope().header("operation_name"), Some("charge"));
    assert_eq!(first.correlation_id(), first.id());
    assert_eq!(first.envelope().source(), herald_kafka::codec::PLAIN_SOURCE);
    let amount: serde_json::Value = first.decode().unwrap();
    assert_eq!(amount["amount"], 5);
    first.ack().await.unwrap();
    let raw = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw.seq(), Some(2));
    assert_eq!(raw.envelope().content_type(), "application/octet-stream");
    assert_eq!(raw.envelope().payload().as_bytes(), b"\xffraw");
    raw.ack().await.unwrap();
}

/// A Kafka group that has offsets but was never opened by herald (plain
/// clients', or an older herald's) resumes at its offsets: opening it does
/// not move them to the end, as making a new group at `Latest` would.
#[tokio::test]
async fn a_group_with_offsets_from_plain_clients_resumes_there() {
    let config = support::fresh_config().partitions(1);
    let kafka_topic = config.kafka_topic("interop.resume");
    let kafka_group = config.kafka_topic("legacy");
    let bus = Bus::new(KafkaStore::open(config).await.unwrap());
    for n in 1..=10u64 {
        bus.publish(Message::json("interop.resume", &n).unwrap())
            .await
            .unwrap();
    }
    // A plain client of the group read six of them.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", support::brokers())
            .set("group.id", &kafka_group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&kafka_topic, 0, Offset::Offset(6))
            .unwrap();
        consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    })
    .await
    .unwrap();
    let mut sub = bus
        .subscribe_raw("interop.resume")
        .group("legacy")
        .await
        .unwrap();
    for seq in 7..=10 {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("the group resumes at its offset")
            .unwrap()
            .unwrap();
        assert_eq!(d.seq(), Some(seq));
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_record_with_malformed_herald_headers_is_dead_lettered() {
    let config = support::fresh_config().partitions(1);
    let kafka_topic = config.kafka_topic("interop.bad");
    support::create_topic(&kafka_topic).await;
    let dead_letter_topic = config.dead_letter_topic();
    let bus = Bus::new(KafkaStore::open(config).await.unwrap());
    let mut sub = bus
        .subscribe_raw("interop.bad")
        .group("g")
        .start(StartPosition::Earliest)
        .await
        .unwrap();
    let producer = plain_producer();
    let bad = OwnedHeaders::new().insert(Header {
        key: "message_id",
        value: Some(b"not-a-uuid".as_slice()),
    });
    producer
        .send(
            FutureRecord::<str, str>::to(&kafka_topic)
                .payload(r#"{"lost":false}"#)
                .headers(bad),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(&kafka_topic).payload(r#"{"ok":true}"#),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let good = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(good.seq(), Some(2), "the group goes on past the bad record");
    good.ack().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let letter = loop {
        let dead = bus.dead_letters().await.unwrap();
        if let Some(d) = dead.into_iter().next() {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter.source, FailureSource::Decode);
    assert_eq!(letter.code, ErrorCode::Validation);
    assert_eq!(letter.group.as_deref(), Some("g"));
    assert_eq!(letter.envelope.topic().as_str(), "interop.bad");
    assert_eq!(letter.envelope.seq(), Some(1));
    assert_eq!(letter.envelope.payload().as_bytes(), br#"{"lost":false}"#);

    // A plain consumer of the dead-letter topic sees the original value and
    // headers and why it failed.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .set("group.id", "plain-dlq-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dead_letter_topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let record = tokio::task::spawn_blocking(move || loop {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            break m.unwrap().detach();
        }
    })
    .await
    .unwrap();
    let header = |n: &str| {
        record
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == n)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("message_id").as_deref(), Some("not-a-uuid"));
    assert_eq!(header("original_topic").as_deref(), Some("interop.bad"));
    assert_eq!(header("original_offset").as_deref(), Some("0"));
    assert_eq!(header("original_partition").as_deref(), Some("0"));
    assert_eq!(header("error_type").as_deref(), Some("VALIDATION"));
    assert!(header("failure_reason").unwrap().contains("message_id"));
    assert!(header("failure_timestamp").is_some());
    assert_eq!(record.payload(), Some(&br#"{"lost":false}"#[..]));
}

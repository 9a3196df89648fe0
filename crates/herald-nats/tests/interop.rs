//! herald and a plain async-nats client read each other's messages: the
//! envelope is `Herald-*` headers and the payload is the body.

mod support;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures_util::StreamExt;
use herald::{Bus, Message, Payload, Topic};
use herald_nats::{NatsStore, PLAIN_SOURCE};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn a_plain_client_reads_herald_events() {
    let store = NatsStore::open(support::fresh_config()).await.unwrap();
    let bus = Bus::new(store.clone());
    let topic = Topic::new("interop.out").unwrap();
    let sent = Message::new(
        "interop.out",
        Payload::json(&serde_json::json!({"n": 1})).unwrap(),
    )
    .key("k1")
    .header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    bus.publish([sent, Message::new("interop.out", Payload::null())])
        .await
        .unwrap();

    let plain = async_nats::connect(support::url()).await.unwrap();
    let js = jetstream::new(plain);
    let stream = js
        .stream_by_subject(store.subject(&topic))
        .await
        .expect("the topic has a stream");
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let first = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let partitions = store.partition_subjects(&topic);
    let (before, after) = partitions.split_once(".*.").expect("a partition wildcard");
    let partition = first
        .subject
        .as_str()
        .strip_prefix(before)
        .and_then(|s| s.strip_suffix(after))
        .and_then(|s| s.strip_prefix('.')?.strip_suffix('.'))
        .expect("herald publishes on a partition subject of the topic");
    assert!(partition.parse::<u32>().is_ok_and(|n| n < 8), "{partition}");
    assert_eq!(&first.payload[..], br#"{"n":1}"#);
    let headers = first.headers.as_ref().expect("headers");
    assert_eq!(headers.get("Herald-Key").unwrap().as_str(), "k1");
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    assert!(headers
        .get("traceparent")
        .unwrap()
        .as_str()
        .starts_with("00-4bf92f"));
    let id = headers.get("Herald-Id").unwrap().as_str();
    assert_eq!(
        headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        id,
        "the id is the default idempotency key"
    );
    assert_eq!(
        first.info().unwrap().stream_sequence,
        1,
        "the stream sequence is the seq"
    );
}

#[tokio::test]
async fn herald_consumes_what_a_plain_client_publishes() {
    let store = NatsStore::open(support::fresh_config()).await.unwrap();
    let bus = Bus::new(store.clone());
    let topic = Topic::new("interop.in").unwrap();
    let mut sub = bus.subscribe_raw("interop.*").ephemeral().await.unwrap();
    bus.publish(Message::new("interop.in", Payload::json(&1).unwrap()))
        .await
        .unwrap();

    let plain = async_nats::connect(support::url()).await.unwrap();
    let js = jetstream::new(plain);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", "00-abc-def-01");
    headers.insert("Herald-Key", "order-7");
    js.publish_with_headers(store.subject(&topic), headers, r#"{"plain":true}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(store.subject(&topic), "not json at all".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let own = next(&mut sub).await;
    assert_eq!(own.seq(), Some(1));
    own.ack().await.unwrap();
    let json = next(&mut sub).await;
    assert_eq!(json.seq(), Some(2), "a plain publish gets the next seq");
    assert_eq!(json.source(), PLAIN_SOURCE);
    assert_eq!(json.key(), Some("order-7"));
    assert_eq!(json.header("traceparent"), Some("00-abc-def-01"));
    assert_eq!(json.correlation_id(), json.id());
    let v: serde_json::Value = json.decode().unwrap();
    assert_eq!(v["plain"], true);
    json.ack().await.unwrap();
    let raw = next(&mut sub).await;
    assert_eq!(raw.seq(), Some(3));
    assert_eq!(raw.content_type(), "application/octet-stream");
    assert_eq!(raw.payload().as_bytes(), b"not json at all");
    raw.ack().await.unwrap();
    assert_eq!(bus.last_seq("interop.in").await.unwrap(), Some(3));
}

/// A topic stream made before partitions (its plain subject only) gains
/// the partition subjects when herald next publishes to it, and a group
/// reads what was published before and after.
#[tokio::test]
async fn a_stream_made_before_partitions_gains_them() {
    let config = support::fresh_config();
    let before = NatsStore::open(config.clone()).await.unwrap();
    let topic = Topic::new("interop.old").unwrap();
    before.ensure_topic(&topic).await.unwrap();
    let js = jetstream::new(async_nats::connect(support::url()).await.unwrap());
    let name = js.stream_by_subject(before.subject(&topic)).await.unwrap();
    let mut old = js
        .get_stream(&name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    old.subjects = vec![before.subject(&topic)];
    old.description = None;
    js.update_stream(old)
        .await
        .expect("the stream as herald made it before");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Key", "order-7");
    js.publish_with_headers(before.subject(&topic), headers, "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let store = NatsStore::open(config).await.unwrap();
    let bus = Bus::new(store.clone());
    bus.publish(Message::new("interop.old", Payload::json(&2).unwrap()).key("order-7"))
        .await
        .unwrap();
    let subjects = js
        .get_stream(&name)
        .await
        .unwrap()
        .cached_info()
        .config
        .subjects
        .clone();
    assert_eq!(
        subjects,
        [store.subject(&topic), store.partition_subjects(&topic)]
    );
    let mut group = bus
        .subscribe_raw("interop.old")
        .group("old")
        .start(herald::StartPosition::Earliest)
        .await
        .unwrap();
    // The two are in different parts (the plain subject, a partition):
    // both come, in either order.
    let mut got = Vec::new();
    for _ in [1, 2] {
        let d = next(&mut group).await;
        assert_eq!(d.key(), Some("order-7"));
        got.push((d.seq().unwrap(), d.decode::<u64>().unwrap()));
        d.ack().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, [(1, 1), (2, 2)]);
}

async fn next(sub: &mut herald::Subscription) -> herald::Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("open")
        .expect("no error")
}

/// One W3C trace from a producer process, through a handler in another,
/// to what that handler publishes, as a plain client sees the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_producer_and_consumer_processes() {
    let config = support::fresh_config();
    let producer = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let store = NatsStore::open(config).await.unwrap();
    let consumer = Bus::new(store.clone());
    let handler = consumer
        .handler("trace.in")
        .group("relay")
        .start(herald::StartPosition::Earliest)
        .run(|msg| async move { Ok(vec![Message::json("trace.out", &msg.decode::<u32>()?)?]) })
        .await
        .unwrap();
    producer
        .publish(Message::json("trace.in", &5u32).unwrap())
        .await
        .unwrap();

    let js = jetstream::new(async_nats::connect(support::url()).await.unwrap());
    let read = |topic: &'static str| {
        let (js, store) = (js.clone(), store.clone());
        async move {
            let subject = store.subject(&Topic::new(topic).unwrap());
            let deadline = tokio::time::Instant::now() + WAIT;
            let stream = loop {
                match js.stream_by_subject(subject.clone()).await {
                    Ok(s) => break s,
                    Err(e) => assert!(tokio::time::Instant::now() < deadline, "no {topic}: {e}"),
                }
            };
            let consumer = js
                .get_stream(stream)
                .await
                .unwrap()
                .create_consumer(pull::OrderedConfig::default())
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let m = tokio::time::timeout(WAIT, messages.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let tp = m.headers.as_ref().unwrap().get("traceparent").unwrap();
            tp.as_str().parse::<herald::trace::TraceParent>().unwrap()
        }
    };
    let sent = read("trace.in").await;
    let relayed = read("trace.out").await;
    assert_eq!(
        relayed.trace_id(),
        sent.trace_id(),
        "one trace across processes"
    );
    assert_ne!(relayed.span_id(), sent.span_id());
    handler.shutdown(std::time::Duration::from_secs(5)).await;
}

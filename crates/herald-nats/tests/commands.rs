//! Commands across processes: a handler in one process (here: a store with
//! a connection of its own) answers calls from another over NATS
//! request/reply, with herald's envelope and error codes.

mod support;

use std::time::Duration;

use herald::{Bus, ErrorCode, Message, Payload};
use herald_nats::NatsStore;

/// Call until a handler registered elsewhere is reachable (its
/// subscription travels to the server after `handle_command` returns).
async fn call_when_served(bus: &Bus, command: Message) -> herald::Result<herald::Envelope> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match bus.call(command.clone()).await {
            Err(e) if e.code() == ErrorCode::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_in_another_process_answers_with_herald_codes() {
    let config = support::fresh_config();
    let server = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let client = Bus::new(NatsStore::open(config.clone()).await.unwrap());
    let handle = server
        .handle_command("math.double", |req| async move {
            let n: i64 = req.decode()?;
            if n < 0 {
                return Err(herald::Error::validation("negative"));
            }
            if n == 999 {
                std::future::pending::<()>().await;
            }
            Payload::json(&(n * 2))
        })
        .unwrap();

    let command = Message::json("math.double", &21).unwrap();
    let response = call_when_served(&client, command).await.unwrap();
    assert_eq!(response.decode::<i64>().unwrap(), 42);
    assert_eq!(response.kind(), herald::Kind::Response);
    assert!(response.causation_id().is_some(), "caused by the command");

    let err = client
        .call(Message::json("math.double", &-1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{err}");
    assert!(err.message().contains("negative"));

    let err = client
        .call(Message::json("math.double", &999).unwrap())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);

    let err = client
        .call(Message::json("math.halve", &2).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);

    // A plain NATS client calls it too.
    let plain = async_nats::connect(support::url()).await.unwrap();
    let subject = format!("{}.$cmd.math.double", config.subject_prefix());
    let reply = plain.request(subject, "5".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"10");

    assert!(handle.unregister());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.call(Message::json("math.double", &1).unwrap()).await {
            Err(e) if e.code() == ErrorCode::NotFound => break,
            _ if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            other => panic!("still served after unregister: {other:?}"),
        }
    }
}

/// A call right after `unregister` is `NOT_FOUND`, every time: it waits
/// for the withdrawal to reach the server instead of sending a request
/// the draining subscription could lose (then the caller would wait out
/// its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_unregister_is_not_found_every_time() {
    let store = NatsStore::open(support::fresh_config()).await.unwrap();
    let bus = Bus::builder()
        .config(herald::Config::default().timeout(Duration::from_secs(10)))
        .transport(store.clone())
        .build()
        .unwrap();
    for round in 0..30 {
        let topic = format!("withdraw.r{round}");
        let handle = bus
            .handle_command(&topic, |_| async { Payload::json(&1) })
            .unwrap();
        let served = bus
            .call(Message::json(topic.clone(), &0).unwrap())
            .await
            .unwrap();
        assert_eq!(served.decode::<u32>().unwrap(), 1);
        assert!(handle.unregister());
        let err = bus
            .call(Message::json(topic.clone(), &0).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound, "round {round}: {err}");
    }
    store.close().await;
}

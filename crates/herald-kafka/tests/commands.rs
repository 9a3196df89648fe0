//! Commands across processes: a handler in one process (here: a store with
//! clients of its own) answers calls from another over a request topic and
//! a per-process reply topic, with herald's envelope and error codes.

mod support;

use std::time::{Duration, Instant};

use herald::{Bus, ErrorCode, Message, Payload};
use herald_kafka::KafkaStore;

/// Call until a handler registered elsewhere is reachable (its consumer
/// joins its group after `handle_command` returns).
async fn call_when_served(bus: &Bus, command: Message) -> herald::Result<herald::Envelope> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bus.call(command.clone()).await {
            Err(e) if e.code() == ErrorCode::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_in_another_process_answers_with_herald_codes() {
    let config = support::fresh_config();
    let server = Bus::new(KafkaStore::open(config.clone()).await.unwrap());
    let client_store = KafkaStore::open(config.clone()).await.unwrap();
    let client = Bus::new(client_store.clone());
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

    let started = Instant::now();
    for n in 0..20 {
        let r = client
            .call(Message::json("math.double", &n).unwrap())
            .await
            .unwrap();
        assert_eq!(r.decode::<i64>().unwrap(), n * 2);
    }
    println!(
        "Kafka command round trip: {:?} on average over 20 calls",
        started.elapsed() / 20
    );

    let err = client
        .call(Message::json("math.double", &-1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{err}");
    assert!(err.message().contains("negative"));

    let err = client
        .call(Message::json("math.double", &999).unwrap())
        .timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);

    let err = client
        .call(Message::json("math.halve", &2).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);

    assert!(handle.unregister());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.call(Message::json("math.double", &1).unwrap()).await {
            Err(e) if e.code() == ErrorCode::NotFound => break,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("still served after unregister: {other:?}"),
        }
    }
    client_store.close().await;
}

//! Opening and closing stores over and over, each with consumers of every
//! kind running (a group-less tail, a consumer group, a command handler and
//! a caller), then deleting the store's topics the moment `close` returns —
//! as `herald bench --store kafka://…` does at its end. Once `close` has
//! returned, no consumer of the store may still be fetching: a fetch of a
//! deleted topic gets an answer librdkafka 2.12 cannot take from some
//! brokers (tansu 0.6 names the leader of the unknown topic; librdkafka
//! looks the topic up by a name it never read and crashes the process), and
//! a process that exits or drops its runtime after `close` must not have
//! consumers of the store left running either.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, Payload, StartPosition};
use herald_kafka::{KafkaConfig, KafkaStore};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Rounds of open, consume, close, delete.
const ROUNDS: usize = 12;

/// How long one delivery or call may take.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_consumer_outlives_close() {
    for round in 0..ROUNDS {
        let config = support::fresh_config().partitions(1);
        let store = KafkaStore::open(config.clone()).await.unwrap();
        let bus = Bus::new(store.clone());
        bus.publish(Message::json("teardown.orders", &round).unwrap())
            .await
            .unwrap();

        // A tail and two groups, each fetching: they have the event.
        let mut tail = bus
            .subscribe_raw("teardown.>")
            .ephemeral()
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        let mut group = bus
            .subscribe_raw("teardown.>")
            .group("g")
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        let mut left = bus
            .subscribe_raw("teardown.>")
            .group("h")
            .start(StartPosition::Earliest)
            .await
            .unwrap();
        for sub in [&mut tail, &mut group, &mut left] {
            let d = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: nothing delivered"))
                .unwrap()
                .unwrap();
            d.ack().await.unwrap();
        }
        // A group whose last member leaves before the store closes: its
        // consumer stops on its own. The others are open when it closes.
        drop(left);

        // A command served and called through the brokers: a command
        // consumer, the registry's and the reply topic's.
        let server = KafkaStore::open(config.clone()).await.unwrap();
        let served = Bus::new(server.clone());
        let _handler = served
            .handle_command("teardown.echo", |req| async move {
                Payload::json(&req.decode::<usize>()?)
            })
            .unwrap();
        let answer = call_when_served(&bus, Message::json("teardown.echo", &round).unwrap())
            .await
            .unwrap_or_else(|e| panic!("round {round}: the command was not answered: {e}"));
        assert_eq!(answer.decode::<usize>().unwrap(), round);

        bus.close().await.unwrap();
        served.close().await.unwrap();
        // Nothing of either store fetches now.
        delete_topics(&config).await;
        drop((tail, group));
    }
}

/// Call until a handler registered by another store is reachable (its
/// registration is read a moment after `handle_command` returns).
async fn call_when_served(bus: &Bus, command: Message) -> herald::Result<herald::Envelope> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match bus.call(command.clone()).await {
            Err(e) if e.code() == ErrorCode::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// Delete every topic of `config`'s environment.
async fn delete_topics(config: &KafkaConfig) {
    let admin: AdminClient<DefaultClientContext> =
        herald_kafka::client_config(config.admin_properties())
            .create()
            .unwrap();
    let prefix = format!("{}.", config.environment_name());
    let names: Vec<String> = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(!names.is_empty(), "the store made topics");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin
        .delete_topics(&refs, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

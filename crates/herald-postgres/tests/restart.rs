//! PostgreSQL restarted in the middle of a stream: publishers see only
//! retryable errors (and retry with the same idempotency key), the group
//! consumer reconnects and resumes, and afterwards every published event is
//! delivered. Runs against a server of its own (see `own_server`).

mod own_server;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, StartPosition};
use herald_postgres::{PgConfig, PgStore};
use own_server::OwnServer;

const PUBLISHERS: u64 = 2;
const EACH: u64 = 1_500;
const TOPIC: &str = "restart.orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_loses_nothing() {
    let mut server = OwnServer::start();
    let config = PgConfig::new(server.url())
        .schema("restart_test")
        .poll_interval(Duration::from_millis(100))
        .publish_timeout(Duration::from_secs(2));
    let bus = Bus::new(PgStore::open(config).await.expect("open"));

    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let consumer_errors = Arc::new(Mutex::new(Vec::new()));
    let mut sub = bus
        .subscribe_raw(TOPIC)
        .group("billing")
        .start(StartPosition::Earliest)
        .ack_wait(Duration::from_secs(2))
        .await
        .expect("subscribe");
    let consumer = {
        let (seen, errors) = (seen.clone(), consumer_errors.clone());
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                match d {
                    Ok(d) => {
                        let n: u64 = d.decode().expect("a number");
                        // Delivered is what counts. An ack that fails may
                        // still have committed (the reply lost to the
                        // crash), so it proves nothing either way; one that
                        // did not commit redelivers after `ack_wait`.
                        seen.lock().unwrap().insert(n);
                        if let Err(e) = d.ack().await {
                            errors.lock().unwrap().push(e.code());
                        }
                    }
                    Err(e) => errors.lock().unwrap().push(e.code()),
                }
            }
        })
    };

    let publish_errors = Arc::new(Mutex::new(Vec::new()));
    let published = Arc::new(Mutex::new(0u64));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (bus, errors, published) = (bus.clone(), publish_errors.clone(), published.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let n = p * EACH + i;
                    loop {
                        let msg = Message::json(TOPIC, &n)
                            .expect("json")
                            .idempotency_key(format!("order-{n}"));
                        match bus.publish(msg).await {
                            Ok(_) => break,
                            Err(e) => {
                                errors.lock().unwrap().push(e.code());
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    *published.lock().unwrap() += 1;
                }
            })
        })
        .collect();

    // Crash and restart once a third is published.
    while *published.lock().unwrap() < PUBLISHERS * EACH / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_before = seen.lock().unwrap().len();
    let server = tokio::task::spawn_blocking(move || {
        server.crash();
        // The outage.
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
        server
    })
    .await
    .expect("restart");
    for p in publishers {
        p.await.expect("publisher");
    }

    let total = PUBLISHERS * EACH;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (seen.lock().unwrap().len() as u64) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} delivered after the restart",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retryable = |c: &ErrorCode| matches!(c, ErrorCode::Unavailable | ErrorCode::Timeout);
    let publish_errors = publish_errors.lock().unwrap().clone();
    assert!(
        publish_errors.iter().all(retryable),
        "publishers saw only retryable errors: {publish_errors:?}"
    );
    let consumer_errors = consumer_errors.lock().unwrap().clone();
    assert!(
        consumer_errors.iter().all(retryable),
        "the consumer saw only retryable errors: {consumer_errors:?}"
    );
    assert!(
        (seen_before as u64) < total,
        "the restart came mid-stream ({seen_before} of {total} delivered before it)"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        (0..total).collect::<BTreeSet<_>>(),
        "every published event delivered"
    );
    println!(
        "restart: {total} events delivered; {} publish errors and {} consumer errors during the outage, all retryable; {seen_before} delivered before it",
        publish_errors.len(),
        consumer_errors.len()
    );
    bus.close().await.expect("close");
    consumer.abort();
    drop(server);
}

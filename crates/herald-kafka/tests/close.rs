//! Closing a store while a group subscribe is still joining: the subscribe
//! fails with `UNAVAILABLE` or returns a stream that ends, at once. Asked of
//! the store itself, below the bus (a bus gives up on such a subscribe by
//! itself; the store must not go on joining for its own sake).

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::{Bus, ErrorCode, Message, Pattern, StartPosition, SubscribeSpec, Transport};
use herald_kafka::KafkaStore;

/// How long a subscribe or a stream may take to end once the store is
/// closed: a guard against a hang, well under the 30 s a join may take.
const END_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscribe_in_flight_ends_with_its_store() {
    for close_after in [0, 20, 100, 200].map(Duration::from_millis) {
        let store = Arc::new(
            KafkaStore::open(support::fresh_config().partitions(1))
                .await
                .unwrap(),
        );
        // An event before the group: the subscribe waits for partitions.
        let bus = Bus::new(store.clone());
        bus.publish(Message::json("close.racing", &0).unwrap())
            .await
            .unwrap();
        let mut spec = SubscribeSpec::new(vec![Pattern::new("close.racing").unwrap()]);
        spec.group = Some("g".to_owned());
        spec.start = StartPosition::Latest;
        let opening = tokio::spawn({
            let store = store.clone();
            async move { Transport::subscribe(&*store, spec).await }
        });
        tokio::time::sleep(close_after).await;
        store.close().await;
        let opened = tokio::time::timeout(END_WAIT, opening)
            .await
            .unwrap_or_else(|_| panic!("closed after {close_after:?}: the subscribe went on"))
            .unwrap();
        match opened {
            Err(e) => assert_eq!(e.code(), ErrorCode::Unavailable, "{e}"),
            Ok(mut sub) => assert!(
                tokio::time::timeout(END_WAIT, sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("closed after {close_after:?}: the stream goes on"))
                    .is_none(),
                "closed after {close_after:?}: nothing to deliver"
            ),
        }
    }
}

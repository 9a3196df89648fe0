//! Closing subscriptions and the bus.

use std::time::Duration;

use futures_util::StreamExt;
use herald::{ErrorCode, StartPosition};

use crate::support::{collect, numbered, numbers, recv, DELIVERY_WAIT};
use crate::Harness;

/// A closed subscription's stream ends; the bus and other subscriptions go
/// on; new subscriptions open fine.
pub async fn close_a_subscription_and_continue(h: &Harness) {
    let bus = h.bus().await;
    let mut closing = bus.subscribe_raw("conf.close").ephemeral().await.unwrap();
    let mut staying = bus.subscribe_raw("conf.close").ephemeral().await.unwrap();
    bus.publish(numbered("conf.close", 1)).await.unwrap();
    recv(&mut closing).await.ack().await.unwrap();
    closing.close();
    closing.close();
    assert!(tokio::time::timeout(DELIVERY_WAIT, closing.next())
        .await
        .unwrap()
        .is_none());
    for i in 2..=50 {
        bus.publish(numbered("conf.close", i)).await.unwrap();
    }
    let got: Vec<u64> = numbers(&mut staying, 50).await;
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    let mut fresh = bus.subscribe_raw("conf.close").ephemeral().await.unwrap();
    bus.publish(numbered("conf.close", 51)).await.unwrap();
    assert_eq!(crate::support::number(&recv(&mut fresh).await), 51);
}

/// Subscriptions closed from other tasks while publishers run: every stream
/// ends, no publisher errs or hangs, survivors get everything.
pub async fn concurrent_close_while_publishing(h: &Harness) {
    const N: u64 = 2000;
    let bus = h.bus().await;
    let mut survivors = Vec::new();
    for _ in 0..2 {
        let mut sub = bus.subscribe_raw("conf.cclose").ephemeral().await.unwrap();
        survivors.push(tokio::spawn(async move {
            collect(&mut sub, N as usize).await.len()
        }));
    }
    let mut closers = Vec::new();
    for i in 0..20u64 {
        let mut sub = bus
            .subscribe_raw("conf.cclose")
            .ephemeral()
            .buffer(8)
            .await
            .unwrap();
        let handle = sub.close_handle();
        let reader = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(item) = sub.next().await {
                item.unwrap().ack().await.unwrap();
                n += 1;
            }
            n
        });
        closers.push(tokio::spawn(async move {
            for _ in 0..i * 3 {
                tokio::task::yield_now().await;
            }
            handle.close();
            reader.await.unwrap()
        }));
    }
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..N / 4 {
                    bus.publish(numbered("conf.cclose", p * N + i))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for c in closers {
        assert!(c.await.unwrap() <= N);
    }
    for s in survivors {
        assert_eq!(s.await.unwrap(), N as usize);
    }
}

/// After `close`, publishes fail with `UNAVAILABLE` and open streams end.
pub async fn closed_bus_refuses_with_unavailable(h: &Harness) {
    let bus = h.bus().await;
    let mut sub = bus.subscribe_raw("conf.closed").ephemeral().await.unwrap();
    bus.close().await.unwrap();
    bus.close().await.unwrap();
    let err = bus.publish(numbered("conf.closed", 1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.retryable());
    assert!(tokio::time::timeout(DELIVERY_WAIT, sub.next())
        .await
        .unwrap()
        .is_none());
    let err = bus.call(numbered("conf.closed.cmd", 1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
}

/// When the bus closes, relative to the start of a group subscribe.
#[derive(Debug, Clone, Copy)]
enum CloseAt {
    /// At once, before the subscribe task has run.
    Now,
    /// After the subscribe task had one chance to run.
    AfterAYield,
    /// This long after the subscribe started.
    After(Duration),
}

/// A group subscribe in flight when its bus closes fails with
/// `UNAVAILABLE` or returns a stream that ends (DESIGN.md §4.15), whatever
/// the moment of the close: `close` is not held up by it, and no stream
/// outlives its bus.
pub async fn a_subscribe_racing_close_fails_or_ends(h: &Harness) {
    // How long the subscribe may take to resolve once the bus is closed:
    // a guard against a hang, not a pace.
    const RESOLVE_WAIT: Duration = Duration::from_secs(20);
    let moments = [
        CloseAt::Now,
        CloseAt::AfterAYield,
        CloseAt::After(Duration::from_millis(20)),
        CloseAt::After(Duration::from_millis(100)),
        CloseAt::After(Duration::from_millis(200)),
    ];
    for at in moments {
        let bus = h.bus().await;
        // A topic with an event, so a store has partitions or streams to
        // set the group up on while the close comes.
        bus.publish(numbered("conf.close.racing", 0)).await.unwrap();
        let opening = tokio::spawn({
            let bus = bus.clone();
            async move {
                bus.subscribe_raw("conf.close.racing")
                    .group("g")
                    .start(StartPosition::Latest)
                    .await
            }
        });
        match at {
            CloseAt::Now => {}
            CloseAt::AfterAYield => tokio::task::yield_now().await,
            CloseAt::After(d) => tokio::time::sleep(d).await,
        }
        bus.close().await.unwrap();
        let opened = tokio::time::timeout(RESOLVE_WAIT, opening)
            .await
            .unwrap_or_else(|_| panic!("close {at:?}: the subscribe did not resolve"))
            .expect("the subscribe task");
        match opened {
            Err(e) => assert_eq!(
                e.code(),
                ErrorCode::Unavailable,
                "close {at:?}: a subscribe cut short by close fails with UNAVAILABLE, not {e}"
            ),
            Ok(mut sub) => {
                let next = tokio::time::timeout(DELIVERY_WAIT, sub.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("close {at:?}: the subscribe returned a stream that never ends")
                    });
                assert!(
                    next.is_none(),
                    "close {at:?}: the stream of a closed bus ends without deliveries"
                );
            }
        }
    }
}

//! W3C trace context on the bus: publishes carry a `traceparent`, handling
//! continues the trace in what it publishes, and the `tracing` spans name
//! the trace.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::trace::TraceParent;
use herald::{Bus, Envelope, Message, StartPosition};

async fn next(sub: &mut herald::Subscription) -> Arc<Envelope> {
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let env = d.shared_envelope().clone();
    d.ack().await.unwrap();
    env
}

#[tokio::test]
async fn a_publish_starts_a_trace_unless_the_message_carries_one() {
    let bus = Bus::memory();
    let mut sub = bus.subscribe_raw("t.>").await.unwrap();
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    bus.publish([
        Message::json("t.a", &1u8).unwrap(),
        Message::json("t.a", &2u8).unwrap(),
        Message::json("t.a", &3u8)
            .unwrap()
            .header("traceparent", theirs),
    ])
    .await
    .unwrap();
    let a = TraceParent::of(&*next(&mut sub).await).expect("a traceparent");
    let b = TraceParent::of(&*next(&mut sub).await).expect("a traceparent");
    assert_ne!(
        a.trace_id(),
        b.trace_id(),
        "each publish outside a handler is a trace"
    );
    assert_eq!(
        next(&mut sub).await.header("traceparent"),
        Some(theirs),
        "kept"
    );
}

#[tokio::test]
async fn no_room_for_the_header_means_no_header_not_a_failure() {
    let bus = Bus::memory();
    let mut sub = bus.subscribe_raw("t.full").await.unwrap();
    let mut msg = Message::json("t.full", &1u8).unwrap();
    for i in 0..64 {
        msg = msg.header(format!("h{i}"), "v");
    }
    bus.publish(msg).await.unwrap();
    let env = next(&mut sub).await;
    assert_eq!(env.headers().len(), 64);
    assert!(env.header("traceparent").is_none());
}

#[tokio::test]
async fn what_a_handler_publishes_continues_the_handled_trace() {
    let bus = Bus::memory();
    let mut effects = bus.subscribe_raw("orders.billed").await.unwrap();
    let handler = bus
        .handler("orders.placed")
        .group("billing")
        .start(StartPosition::Earliest)
        .run(|order| async move {
            let n: u32 = order.decode()?;
            Ok(vec![Message::json("orders.billed", &n)?])
        })
        .await
        .unwrap();
    let root = TraceParent::root();
    bus.publish(
        Message::json("orders.placed", &7u32)
            .unwrap()
            .header("traceparent", root.to_string()),
    )
    .await
    .unwrap();
    let billed = TraceParent::of(&*next(&mut effects).await).unwrap();
    assert_eq!(billed.trace_id(), root.trace_id(), "one trace");
    assert_ne!(billed.span_id(), root.span_id(), "a new hop");
    handler.shutdown(Duration::from_secs(5)).await;
}

/// Reports one fixed trace as the caller's.
struct Fixed(TraceParent);

impl herald::trace::Propagator for Fixed {
    fn current(&self) -> Option<TraceParent> {
        Some(self.0)
    }

    fn continue_span(&self, _: &tracing::Span, _: TraceParent) {}
}

/// A propagator given to one bus is that bus's: another bus in the same
/// process starts its own traces.
#[tokio::test]
async fn a_bus_s_own_propagator_is_used_by_that_bus_only() {
    let caller = TraceParent::new(
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        0x00f0_67aa_0ba9_02b7,
        true,
    )
    .unwrap();
    let traced = Bus::builder().propagator(Fixed(caller)).build().unwrap();
    let plain = Bus::memory();
    let mut from_traced = traced.subscribe_raw("t.>").await.unwrap();
    let mut from_plain = plain.subscribe_raw("t.>").await.unwrap();
    traced
        .publish(Message::json("t.a", &1u8).unwrap())
        .await
        .unwrap();
    plain
        .publish(Message::json("t.a", &1u8).unwrap())
        .await
        .unwrap();
    let got = TraceParent::of(&*next(&mut from_traced).await).expect("a traceparent");
    assert_eq!(
        got, caller,
        "the caller's span, through the bus's propagator"
    );
    let other = TraceParent::of(&*next(&mut from_plain).await).expect("a traceparent");
    assert_ne!(other.trace_id(), caller.trace_id(), "a trace of its own");
}

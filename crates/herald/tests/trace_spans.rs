//! The `tracing` spans of publishing, handling and settling name the W3C
//! trace. A binary of its own: `tracing` caches each callsite's interest
//! process-wide, so a test on another thread without a subscriber could
//! hide these spans from this one's.

mod support;

use std::time::Duration;

use herald::trace::TraceParent;
use herald::{Bus, Message, StartPosition};

/// Collects what the `fmt` subscriber writes.

#[tokio::test]
async fn publish_handle_and_settle_spans_name_the_trace() {
    let captured = support::Captured::default();
    let _guard = captured.install(tracing::Level::DEBUG);

    let bus = Bus::memory();
    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let handler = bus
        .handler("jobs.run")
        .group("workers")
        .start(StartPosition::Earliest)
        .run(move |_job| {
            let done = done.clone();
            async move {
                let _ = done.send(());
                Ok(())
            }
        })
        .await
        .unwrap();
    let root = TraceParent::root();
    bus.publish(
        Message::json("jobs.run", &1u8)
            .unwrap()
            .header("traceparent", root.to_string()),
    )
    .await
    .unwrap();
    handled.recv().await.unwrap();
    handler.shutdown(Duration::from_secs(5)).await;

    let text = captured.text();
    let id = root.trace_id_hex();
    for span in ["herald.publish", "herald.handle", "herald.settle"] {
        assert!(
            text.lines().any(|l| l.contains(span) && l.contains(&id)),
            "{span} with trace {id} in:\n{text}"
        );
    }
    assert!(text.contains("outcome=Acked"), "{text}");
    // Issue 22 item 6: what a log line about a message needs to be found
    // by, beside the trace: its correlation and causation, topic, seq and
    // group.
    let handle = text
        .lines()
        .find(|l| l.contains("herald.handle"))
        .expect("a handle span");
    for field in [
        "correlation_id=",
        "message_id=",
        "topic=jobs.run",
        "seq=1",
        "group=workers",
    ] {
        assert!(handle.contains(field), "{field} in: {handle}");
    }
    let publish = text
        .lines()
        .find(|l| l.contains("herald.publish"))
        .expect("a publish span");
    assert!(publish.contains("correlation_id="), "{publish}");
}

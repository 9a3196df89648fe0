//! One OpenTelemetry trace from a producer's span, through herald, to the
//! handler's `herald.handle` span and what the handler publishes.

use std::time::Duration;

use herald::trace::TraceParent;
use herald::{Bus, Message, StartPosition};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn a_handler_span_joins_the_producer_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    assert!(herald_otel::install());
    assert!(!herald_otel::install(), "once per process");

    let bus = Bus::memory();
    let mut billed = bus.subscribe_raw("orders.billed").await.unwrap();
    let handler = bus
        .handler("orders.placed")
        .group("billing")
        .start(StartPosition::Earliest)
        .run(|order| async move {
            Ok(vec![Message::json(
                "orders.billed",
                &order.decode::<u32>()?,
            )?])
        })
        .await
        .unwrap();
    bus.publish(Message::json("orders.placed", &7u32).unwrap())
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    let effect = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut billed))
        .await
        .unwrap();
    handler.shutdown(Duration::from_secs(5)).await;
    drop(_guard);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let checkout = find("checkout");
    let handle = find("herald.handle");
    assert_eq!(
        handle.span_context.trace_id(),
        checkout.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(
        handle.parent_span_id,
        checkout.span_context.span_id(),
        "the producer's span is the parent"
    );
    let tp = TraceParent::of(&effect).expect("the effect carries a traceparent");
    assert_eq!(
        tp.trace_id().to_be_bytes(),
        handle.span_context.trace_id().to_bytes()
    );
    assert_eq!(
        tp.span_id().to_be_bytes(),
        handle.span_context.span_id().to_bytes(),
        "published from inside herald.handle"
    );
}

async fn futures_next(sub: &mut herald::Subscription) -> herald::Envelope {
    use futures_util::StreamExt;
    let d = sub.next().await.unwrap().unwrap();
    let env = (*d.shared_envelope().clone()).clone();
    d.ack().await.unwrap();
    env
}

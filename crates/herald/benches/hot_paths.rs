//! Criterion benches of the in-process hot paths that `herald bench` also
//! reports: envelope decode + validation, command dispatch, publish →
//! receive with one subscriber.

use std::future::IntoFuture;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::StreamExt;
use herald::{Bus, Envelope, Limits, Message, Payload, Publish};

fn validation(c: &mut Criterion) {
    let env = Message::json(
        "orders.placed",
        &serde_json::json!({"id": 1234, "total": 99.5}),
    )
    .unwrap()
    .key("customer-42")
    .header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .into_envelope(&Arc::from("bench"))
    .unwrap();
    let bytes = env.to_json().unwrap();
    let limits = Limits::default();
    c.bench_function("envelope decode + validate", |b| {
        b.iter(|| Envelope::from_json_with(std::hint::black_box(&bytes), &limits).unwrap())
    });
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = Bus::memory();
    bus.handle_command("bench.echo", |req| async move { Ok(req.payload().clone()) })
        .unwrap();
    let payload = Payload::json(&serde_json::json!({"order": 42})).unwrap();
    c.bench_function("command dispatch round trip", |b| {
        b.iter(|| {
            rt.block_on(
                bus.call(Message::new("bench.echo", payload.clone()))
                    .into_future(),
            )
            .unwrap()
        })
    });
}

fn publish_receive(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = Bus::memory();
    let mut sub = rt
        .block_on(bus.subscribe_raw("bench.pub").into_future())
        .unwrap();
    let payload = Payload::json(&serde_json::json!({"price": 101.5})).unwrap();
    c.bench_function("publish + receive, 1 subscriber", |b| {
        b.iter(|| {
            rt.block_on(async {
                bus.publish(Message::new("bench.pub", payload.clone()))
                    .await
                    .unwrap();
                sub.next().await.unwrap().unwrap().ack().await.unwrap();
            })
        })
    });
}

criterion_group!(benches, validation, dispatch, publish_receive);
criterion_main!(benches);

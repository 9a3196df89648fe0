//! Spans reach an OTLP/HTTP collector: a collector of the test's own on a
//! loopback port receives the producer's span and the handler's
//! `herald.handle`, in one trace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use herald::{Bus, Message, StartPosition};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Accept OTLP/HTTP posts on a free port; each body goes to the channel.
fn collector() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            if tx.send((request_line, body)).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_in_one_trace() {
    let (url, posts) = collector();
    let otlp = herald_otel::otlp::Otlp::http(&url, "herald-test").unwrap();
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    herald_otel::install();

    let bus = Bus::memory();
    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let handler = bus
        .handler("orders.placed")
        .group("billing")
        .start(StartPosition::Earliest)
        .run(move |_order| {
            let done = done.clone();
            async move {
                let _ = done.send(());
                Ok(())
            }
        })
        .await
        .unwrap();
    bus.publish(Message::json("orders.placed", &7u32).unwrap())
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    handled.recv().await.unwrap();
    handler.shutdown(Duration::from_secs(5)).await;
    drop(_guard);
    tokio::task::spawn_blocking(move || otlp.shutdown())
        .await
        .unwrap()
        .unwrap();

    let mut spans = Vec::new();
    while let Ok((request_line, body)) = posts.recv_timeout(Duration::from_secs(10)) {
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        if spans.iter().any(|s| s.name == "herald.handle")
            && spans.iter().any(|s| s.name == "checkout")
        {
            break;
        }
    }
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no {name} among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (checkout, handle) = (find("checkout"), find("herald.handle"));
    assert_eq!(handle.trace_id, checkout.trace_id, "one trace");
    assert_eq!(handle.parent_span_id, checkout.span_id);
}

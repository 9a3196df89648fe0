//! `herald bench --gateway`: `herald serve`'s HTTP publish throughput and
//! latency next to the same publishes made on the bus directly (the raw
//! baseline, same store, same concurrency, same run), and WebSocket
//! fan-out latency to [`WS_CLIENTS`] connected clients.
//!
//! The server runs in this process on the embedded SQLite store (the
//! default of `herald serve`) in a temporary directory, on a loopback port;
//! the load generator is this module (reqwest with keep-alive connections,
//! tokio-tungstenite clients). The fan-out runs on a store of its own, as
//! fresh as the in-memory bus it is compared with. Both share the machine's cores, so the
//! figures are the whole system's on one box.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::{Bus, Error, ErrorCode, Message, Result};
use herald_server::{Server, ServerConfig};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use super::stats::Percentiles;

/// Concurrent HTTP clients (and raw publishing tasks).
pub const CONNECTIONS: usize = 16;
/// Events per request in the batched workload.
pub const BATCH: usize = 100;
/// WebSocket clients in the fan-out.
pub const WS_CLIENTS: usize = 1_000;

/// The gateway's figures.
#[derive(Debug, Serialize)]
pub struct Gateway {
    pub store: &'static str,
    pub connections: usize,
    /// Single-event HTTP publishes per second.
    pub http_publish_per_s: f64,
    /// Their latency, request sent → 201 read.
    pub http_latency: Percentiles,
    /// The same publishes on the bus directly (no HTTP), per second.
    pub raw_publish_per_s: f64,
    /// http / raw.
    pub ratio: f64,
    /// Events per second in HTTP batches of [`BATCH`].
    pub http_batched_events_per_s: f64,
    pub ws_clients: usize,
    /// Publish → an `event` frame read by each client, over every client
    /// and event: on the SQLite store (each client's subscription tails the
    /// log) ...
    pub ws_fan_out: Percentiles,
    /// ... and on the in-memory store (the gateway's own cost).
    pub ws_fan_out_memory: Percentiles,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

/// Run it; `short` for a quick pass.
pub async fn run(short: bool) -> Result<Gateway> {
    let dir = tempfile_dir()?;
    let store =
        herald_sqlite::SqliteStore::open(herald_sqlite::SqliteConfig::new(dir.join("bench.db")))
            .await?;
    let bus = Bus::new(store);
    let served = Served::start(&bus, "sqlite").await?;
    let port = served.port;
    let base = format!("http://127.0.0.1:{port}");
    let run_for = if short {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };

    let (http_count, latencies) = http_load(&base, run_for, 1).await?;
    let http_publish_per_s = http_count as f64 / run_for.as_secs_f64();
    let raw_publish_per_s = raw_load(&bus, run_for).await? as f64 / run_for.as_secs_f64();
    let (batched, _) = http_load(&base, run_for, BATCH).await?;
    let http_batched_events_per_s = (batched * BATCH) as f64 / run_for.as_secs_f64();
    let events = if short { 20 } else { 100 };
    let clients = if short { 200 } else { WS_CLIENTS };
    served.stop().await?;
    bus.close().await?;
    // The fan-out gets a store of its own, as fresh as the in-memory bus
    // it is compared with (not one holding the HTTP runs' events).
    let ws_fan_out = {
        let store = herald_sqlite::SqliteStore::open(herald_sqlite::SqliteConfig::new(
            dir.join("fan-out.db"),
        ))
        .await?;
        let bus = Bus::new(store);
        let served = Served::start(&bus, "sqlite").await?;
        let figures = fan_out(&bus, served.port, clients, events).await?;
        served.stop().await?;
        figures
    };
    let ws_fan_out_memory = {
        let memory = Bus::memory();
        let served = Served::start(&memory, "memory").await?;
        let figures = fan_out(&memory, served.port, clients, events).await?;
        served.stop().await?;
        figures
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Gateway {
        store: "sqlite",
        connections: CONNECTIONS,
        http_publish_per_s,
        http_latency: Percentiles::of(latencies, 100),
        raw_publish_per_s,
        ratio: http_publish_per_s / raw_publish_per_s,
        http_batched_events_per_s,
        ws_clients: clients,
        ws_fan_out,
        ws_fan_out_memory,
    })
}

/// A `herald_server::Server` on a loopback port of its own (no rate limit,
/// no per-client connection limit below the bench's clients).
struct Served {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Served {
    async fn start(bus: &Bus, kind: &'static str) -> Result<Served> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| failed("bind", e))?;
        let port = tcp.local_addr().map_err(|e| failed("bind", e))?.port();
        // Every client of the bench is one address, which the per-client
        // connection limit would hold to a quarter of the clients.
        let config = ServerConfig {
            rate_limit: 0,
            max_connections_per_client: 2 * WS_CLIENTS,
            ..ServerConfig::default()
        };
        let server = Server::new(bus.clone(), config, kind)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_on(tcp, async {
            let _ = stopped.await;
        }));
        Ok(Served { port, stop, task })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| failed("server task", e))?
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "herald-bench-gateway-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| failed("temporary directory", e))?;
    Ok(dir)
}

/// [`CONNECTIONS`] clients publishing `per_request` events per request for
/// `run_for`: requests answered 201, and each one's latency.
async fn http_load(
    base: &str,
    run_for: Duration,
    per_request: usize,
) -> Result<(usize, Vec<Duration>)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .map_err(|e| failed("http client", e))?;
    let url = format!("{base}/v1/topics/bench.http/events");
    let body = if per_request == 1 {
        json!({"payload": {"order": 1, "sku": "A-100", "qty": 3}}).to_string()
    } else {
        Value::Array(vec![
            json!({"payload": {"order": 1, "sku": "A-100", "qty": 3}});
            per_request
        ])
        .to_string()
    };
    let deadline = Instant::now() + run_for;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|e| failed("publish", e))?;
                    if r.status() != 201 {
                        return Err(failed("publish", r.status()));
                    }
                    let _ = r.bytes().await;
                    latencies.push(start.elapsed());
                }
                Ok::<_, Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| failed("load task", e))??);
    }
    Ok((all.len(), all))
}

/// The same single publishes on the bus directly: how many in `run_for`.
async fn raw_load(bus: &Bus, run_for: Duration) -> Result<usize> {
    let deadline = Instant::now() + run_for;
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (bus, count) = (bus.clone(), count.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    bus.publish(Message::json(
                        "bench.raw",
                        &json!({"order": 1, "sku": "A-100", "qty": 3}),
                    )?)
                    .await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| failed("raw task", e))??;
    }
    Ok(count.load(Ordering::Relaxed) as usize)
}

/// `clients` WebSockets tail `bench.fanout`; `events` are published 20 ms
/// apart, each carrying its publish time; every client's receive latency.
async fn fan_out(bus: &Bus, port: u16, clients: usize, events: usize) -> Result<Percentiles> {
    let epoch = Instant::now();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let mut readers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| failed("websocket", e))?;
        let subscribe =
            json!({"op": "subscribe", "id": "f", "pattern": "bench.fanout", "auto_ack": true});
        ws.send(Frame::text(subscribe.to_string()))
            .await
            .map_err(|e| failed("websocket", e))?;
        loop {
            match ws.next().await {
                Some(Ok(Frame::Text(t))) if t.as_str().contains("\"subscribed\"") => break,
                Some(Ok(_)) => continue,
                other => return Err(failed("subscribe", format!("{other:?}"))),
            }
        }
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < events {
                // The server's pings are answered by the stream as it is
                // read; only text frames carry events.
                let t = match ws.next().await {
                    Some(Ok(Frame::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let now = epoch.elapsed();
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if let Some(at) = v["envelope"]["payload"]["at_ns"].as_u64() {
                    let _ = tx.send(now.saturating_sub(Duration::from_nanos(at)));
                    seen += 1;
                }
            }
        }));
    }
    drop(tx);
    for _ in 0..events {
        let at = epoch.elapsed().as_nanos() as u64;
        bus.publish(Message::json("bench.fanout", &json!({ "at_ns": at }))?)
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(clients * events);
    let collect = async {
        while let Some(d) = rx.recv().await {
            latencies.push(d);
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .is_err()
    {
        return Err(failed(
            "fan-out",
            "clients did not receive every event within 60 s",
        ));
    }
    for r in readers {
        let _ = r.await;
    }
    if latencies.len() != clients * events {
        return Err(failed(
            "fan-out",
            format!(
                "{} of {} deliveries arrived",
                latencies.len(),
                clients * events
            ),
        ));
    }
    Ok(Percentiles::of(latencies, 0))
}

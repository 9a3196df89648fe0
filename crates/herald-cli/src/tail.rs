//! `herald tail`: follow a topic pattern live.

use std::io::Write;
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use herald::{Error, ErrorCode, Result, StartPosition};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Connect, Target};

/// Options of `herald tail`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Pretty lines for people; --json prints each envelope as one JSON line.
With --group the tail is a durable consumer group member: each event is acked
after it is printed, and a restarted tail continues where it stopped.

Examples:
  herald tail 'orders.>'
  herald tail 'orders.*' --from earliest --count 10 --json
  herald tail 'orders.>' --group audit-log >> audit.ndjson"
)]
pub struct Args {
    /// Topic pattern (`*` one segment, `>` the rest).
    pattern: String,
    /// Follow as a member of this durable consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Where to start: latest (default), earliest, or a seq number.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON envelope per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: Connect,
}

fn start(from: &str) -> Result<(StartPosition, Value)> {
    Ok(match from {
        "latest" => (StartPosition::Latest, json!("latest")),
        "earliest" => (StartPosition::Earliest, json!("earliest")),
        n => {
            let seq: u64 = n.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                herald::config::invalid("--from", n, "latest, earliest or a seq >= 1")
            })?;
            (StartPosition::Seq(seq), json!({ "seq": seq }))
        }
    })
}

/// One line for people: time, topic, seq, key, payload.
fn pretty(e: &Value) -> String {
    let time = e["time"].as_str().unwrap_or_default();
    let clock = time.get(11..23).unwrap_or(time);
    let key = e["key"]
        .as_str()
        .map(|k| format!(" [{k}]"))
        .unwrap_or_default();
    format!(
        "{clock} {} #{}{key} {}",
        e["topic"].as_str().unwrap_or_default(),
        e["seq"],
        e["payload"]
    )
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn run(args: Args) -> Result<()> {
    let (position, wire_start) = start(&args.from)?;
    let target = args.connect.open().await?;
    let mut out = std::io::stdout().lock();
    let mut print = |e: &Value| -> Result<()> {
        let line = if args.json { e.to_string() } else { pretty(e) };
        writeln!(out, "{line}").map_err(|e| Error::internal(format!("stdout: {e}")))
    };
    let mut left = args.count.unwrap_or(u64::MAX);
    match &target {
        Target::Store(bus) => {
            let req = bus.subscribe_raw(&args.pattern).start(position);
            let req = match &args.group {
                Some(g) => req.group(g.clone()),
                None => req.ephemeral(),
            };
            let mut sub = req.await?;
            while left > 0 {
                let Some(d) = sub.next().await else { break };
                let d = d?;
                print(
                    &serde_json::to_value(d.envelope())
                        .map_err(|e| Error::internal(e.to_string()))?,
                )?;
                d.ack().await?;
                left -= 1;
            }
        }
        Target::Server { .. } => {
            let url = target.ws_url().expect("a server target");
            let (mut ws, _) =
                tokio_tungstenite::connect_async(&url)
                    .await
                    .map_err(|e| match e {
                        tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401 => {
                            Error::new(
                                ErrorCode::Unauthorized,
                                "the server wants an API token (--token, HERALD_TOKEN)",
                            )
                        }
                        e => Error::new(ErrorCode::Unavailable, format!("cannot reach {url}: {e}")),
                    })?;
            let mut subscribe = json!({"op": "subscribe", "id": "tail", "pattern": args.pattern, "start": wire_start});
            match &args.group {
                Some(g) => subscribe["group"] = json!(g),
                None => subscribe["auto_ack"] = json!(true),
            }
            send(&mut ws, subscribe).await?;
            while left > 0 {
                let Some(msg) = ws.next().await else { break };
                let text =
                    match msg.map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))? {
                        Message::Text(t) => t,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                let frame: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| Error::internal(e.to_string()))?;
                match frame["op"].as_str() {
                    Some("event") => {
                        print(&frame["envelope"])?;
                        if args.group.is_some() {
                            send(&mut ws, json!({"op": "ack", "delivery": frame["delivery"]}))
                                .await?;
                        }
                        left -= 1;
                    }
                    Some("error") => {
                        let code = frame["code"]
                            .as_str()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(ErrorCode::Internal);
                        let e = Error::new(code, frame["message"].as_str().unwrap_or_default());
                        if frame["ref"] == "tail" {
                            return Err(e);
                        }
                        eprintln!("error[{}]: {}", code.as_str(), e.message());
                    }
                    _ => {}
                }
            }
            // A group member unsubscribes first: the server answers once it
            // has applied the acks before and handed back every event the
            // tail took but did not print, so the next member gets them at
            // once rather than when their leases run out.
            if args.group.is_some() {
                send(&mut ws, json!({"op": "unsubscribe", "id": "tail"})).await?;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(t) = msg else { continue };
                        let frame: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                        if frame["op"] == "unsubscribed" || frame["ref"] == "tail" {
                            break;
                        }
                    }
                })
                .await;
            }
            // The closing handshake: the server answers our close after it
            // has applied every frame before it, so wait for that (briefly)
            // rather than vanish with them unread.
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while let Some(Ok(msg)) = ws.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Socket, frame: Value) -> Result<()> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))
}

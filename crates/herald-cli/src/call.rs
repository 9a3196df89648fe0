//! `herald call`: call a command and print its response.

use std::process::ExitCode;

use herald::{Error, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Connect, Target};

/// Options of `herald call`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Prints the response envelope (JSON). The exit code follows the error code
(NOT_FOUND 4 without a handler, TIMEOUT 5, …).

Examples:
  herald call pricing.quote '{\"sku\": \"A-1\", \"qty\": 3}'
  herald call pricing.quote '{\"sku\": \"A-1\"}' --timeout-ms 2000"
)]
pub struct Args {
    /// The command's topic.
    topic: String,
    /// The payload (JSON; default null).
    payload: Option<String>,
    /// How long to wait for the response.
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    connect: Connect,
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn run(args: Args) -> Result<()> {
    let payload: Value = match &args.payload {
        Some(p) => serde_json::from_str(p)
            .map_err(|e| Error::validation(format!("payload is not JSON: {e}")))?,
        None => Value::Null,
    };
    let target = args.connect.open().await?;
    let response: Value = match &target {
        Target::Server { .. } => {
            let query = args
                .timeout_ms
                .map(|t| format!("?timeout_ms={t}"))
                .unwrap_or_default();
            target
                .request(
                    Method::POST,
                    &format!("/v1/commands/{}{query}", args.topic),
                    Some(&json!({"payload": payload})),
                )
                .await?
        }
        Target::Store(bus) => {
            let mut call = bus.call(crate::client::to_message(
                &args.topic,
                json!({"payload": payload}),
            )?);
            if let Some(ms) = args.timeout_ms {
                call = call.timeout(std::time::Duration::from_millis(ms));
            }
            serde_json::to_value(call.await?).map_err(|e| Error::internal(e.to_string()))?
        }
    };
    let pretty =
        serde_json::to_string_pretty(&response).map_err(|e| Error::internal(e.to_string()))?;
    println!("{pretty}");
    Ok(())
}

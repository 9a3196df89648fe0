//! `herald catalog [--asyncapi]`: the live bus's event catalog, from a
//! server's `GET /v1/asyncapi.json` or a store opened directly (`--store`).
//! Plain, a table — topic, owner, schema version, producers, consumer
//! groups, rate — read from the document's `x-herald` extensions; with
//! `--asyncapi`, the AsyncAPI 3.0 document itself. What a catalog holds is
//! `herald_server::catalog`'s.

use std::process::ExitCode;

use herald::Result;
use herald_server::catalog::{Catalog, Endpoints};
use reqwest::Method;
use serde_json::Value;

use crate::client::{Connect, Target};

/// Options of `herald catalog`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald catalog
  herald catalog --asyncapi > asyncapi.json
  herald catalog --store sqlite://herald.db")]
pub struct Args {
    /// Print the AsyncAPI 3.0 document instead of the table.
    #[arg(long)]
    asyncapi: bool,
    #[command(flatten)]
    connect: Connect,
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn run(args: Args) -> Result<()> {
    let store = args.connect.store_url();
    let target = args.connect.open().await?;
    let document: Value = match &target {
        Target::Server { .. } => {
            target
                .request(Method::GET, "/v1/asyncapi.json", None)
                .await?
        }
        Target::Store(bus) => {
            let catalog = Catalog::gather(bus, |_| true, |_| None).await?;
            catalog.asyncapi(&Endpoints {
                gateway: None,
                store,
            })
        }
    };
    if args.asyncapi {
        let text = serde_json::to_string_pretty(&document)
            .map_err(|e| herald::Error::internal(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    print!("{}", table(&document));
    Ok(())
}

/// The table of an AsyncAPI document's channels, from their `x-herald`.
pub fn table(document: &Value) -> String {
    let mut out = format!(
        "{:<32} {:<16} {:>6} {:<24} {:<24} {:>10}\n",
        "TOPIC", "OWNER", "SCHEMA", "PRODUCERS", "GROUPS", "RATE/S"
    );
    let channels = document["channels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for channel in channels.values() {
        let c = &channel["x-herald"];
        let list = |key: &str| {
            let names: Vec<&str> = c[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(",")
            }
        };
        let schema = c["schema_version"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |v| format!("v{v}"));
        let pattern = c["pattern"].as_str().unwrap_or_default();
        let pattern = if c["kind"] == "command" {
            format!("{pattern} (command)")
        } else {
            pattern.to_string()
        };
        out.push_str(&format!(
            "{:<32} {:<16} {:>6} {:<24} {:<24} {:>10.2}\n",
            pattern,
            c["owner"].as_str().unwrap_or("-"),
            schema,
            list("producers"),
            list("groups"),
            c["rate"].as_f64().unwrap_or_default()
        ));
    }
    out
}

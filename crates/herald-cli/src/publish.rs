//! `herald publish`: events from arguments, a file, or NDJSON on stdin.

use std::io::BufRead;
use std::process::ExitCode;

use herald::{Error, Result};
use serde_json::{json, Value};

use crate::client::Connect;

/// Events per request when streaming many.
const CHUNK: usize = 500;

/// Options of `herald publish`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each input line (or --file line, or PAYLOAD argument) is a JSON payload;
with --messages each is a whole message: {\"payload\": …, \"key\": …, \"headers\": {…}, …}.

Examples:
  herald publish orders.placed '{\"id\": 7}'
  herald publish orders.placed '{\"id\": 7}' --key customer-1
  herald publish orders.placed --file orders.ndjson      # one payload per line, in batches
  producer | herald publish orders.placed --messages     # NDJSON messages on stdin
  herald publish orders.placed '{\"id\": 7}' --store sqlite://herald-data/herald.db"
)]
pub struct Args {
    /// The topic.
    topic: String,
    /// Payloads (JSON); none reads --file or stdin.
    payloads: Vec<String>,
    /// Read NDJSON from this file.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Lines are whole messages, not payloads.
    #[arg(long)]
    messages: bool,
    /// The ordering key of every event.
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    connect: Connect,
}

fn message(args: &Args, line: &str, n: usize) -> Result<Value> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| Error::validation(format!("input {n}: not JSON: {e}")))?;
    let mut m = if args.messages {
        v
    } else {
        json!({ "payload": v })
    };
    if let (Some(k), Some(obj)) = (&args.key, m.as_object_mut()) {
        obj.insert("key".into(), json!(k));
    }
    Ok(m)
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn run(args: Args) -> Result<()> {
    let target = args.connect.open().await?;
    if !args.payloads.is_empty() {
        let batch = args
            .payloads
            .iter()
            .enumerate()
            .map(|(i, p)| message(&args, p, i + 1))
            .collect::<Result<Vec<_>>>()?;
        let seqs = target.publish(&args.topic, batch).await?;
        for s in seqs {
            println!("{} #{s}", args.topic);
        }
        return Ok(());
    }
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
            |e| {
                herald::config::invalid("--file", path.display(), &format!("a readable file ({e})"))
            },
        )?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let total = args
        .file
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let bar = crate::progress::bar(total, "bytes");
    let (mut batch, mut published, mut read) = (Vec::with_capacity(CHUNK), 0u64, 0u64);
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| Error::validation(format!("input {}: {e}", i + 1)))?;
        read += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(message(&args, &line, i + 1)?);
        if batch.len() == CHUNK {
            published += target
                .publish(&args.topic, std::mem::take(&mut batch))
                .await?
                .len() as u64;
            bar.set_position(read);
        }
    }
    if !batch.is_empty() {
        published += target.publish(&args.topic, batch).await?.len() as u64;
    }
    bar.finish_and_clear();
    eprintln!("published {published} events to {}", args.topic);
    Ok(())
}

//! `herald replay`: a topic's events from a `seq` or a time, as NDJSON.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use herald::{Result, StartPosition};

use crate::client::Connect;

/// Options of `herald replay`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Prints one envelope per line (NDJSON) on stdout, with a progress bar on stderr.

Examples:
  herald replay orders.placed                       # from the first event
  herald replay orders.placed --from-seq 1000 --limit 50
  herald replay orders.placed --since 2026-12-01T00:00:00Z > orders.ndjson
  herald replay orders.placed --store sqlite://herald-data/herald.db"
)]
pub struct Args {
    /// The topic.
    topic: String,
    /// Start at this seq.
    #[arg(long, conflicts_with = "since")]
    from_seq: Option<u64>,
    /// Start at the first event created at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    #[command(flatten)]
    connect: Connect,
}

/// Events per page.
const PAGE: usize = 1_000;

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn run(args: Args) -> Result<()> {
    let target = args.connect.open().await?;
    let mut from = match (args.from_seq, args.since) {
        (Some(n), _) => StartPosition::Seq(n.max(1)),
        (None, Some(t)) => StartPosition::Time(t),
        (None, None) => StartPosition::Earliest,
    };
    let bar = crate::progress::bar(args.limit, "events");
    let mut out = std::io::stdout().lock();
    let mut left = args.limit.unwrap_or(u64::MAX);
    while left > 0 {
        let page = left.min(PAGE as u64) as usize;
        let (events, next) = target.replay(&args.topic, from, page).await?;
        for e in &events {
            writeln!(out, "{e}").map_err(|e| herald::Error::internal(format!("stdout: {e}")))?;
        }
        left -= events.len() as u64;
        bar.inc(events.len() as u64);
        match next {
            Some(n) => from = StartPosition::Seq(n),
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(())
}

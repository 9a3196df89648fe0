//! `herald topics` and `herald groups`: what a store holds.

use std::process::ExitCode;

use crate::client::Connect;

/// Options of `herald topics` and `herald groups`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald topics
  herald groups --json
  herald topics --store sqlite://herald-data/herald.db")]
pub struct Args {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: Connect,
}

pub fn topics(args: Args) -> ExitCode {
    crate::run(async move {
        let list = args.connect.open().await?.topics().await?;
        if args.json {
            list.iter().for_each(|t| println!("{t}"));
            return Ok(());
        }
        println!("{:<40} {:>12} {:>10}", "TOPIC", "LAST SEQ", "EVENTS/S");
        for t in &list {
            println!(
                "{:<40} {:>12} {:>10}",
                t["topic"].as_str().unwrap_or_default(),
                t["last_seq"],
                t["rate"]
                    .as_f64()
                    .map_or("-".to_owned(), |r| format!("{r:.1}"))
            );
        }
        Ok::<(), herald::Error>(())
    })
}

pub fn groups(args: Args) -> ExitCode {
    crate::run(async move {
        let list = args.connect.open().await?.groups().await?;
        if args.json {
            list.iter().for_each(|g| println!("{g}"));
            return Ok(());
        }
        println!(
            "{:<24} {:<32} {:>8}  OFFSETS (topic: acked through / last seq)",
            "GROUP", "FOLLOWS", "LAG"
        );
        for g in &list {
            let patterns: Vec<&str> = g["patterns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            let offsets: Vec<String> = g["topics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}: {}/{}",
                        t["topic"].as_str().unwrap_or_default(),
                        t["acked_through"],
                        t["last_seq"]
                    )
                })
                .collect();
            println!(
                "{:<24} {:<32} {:>8}  {}",
                g["name"].as_str().unwrap_or_default(),
                patterns.join(" "),
                g["lag"],
                offsets.join(", ")
            );
        }
        Ok::<(), herald::Error>(())
    })
}

//! The `herald` command-line tool.
//!
//! Owns argument parsing and dispatch to subcommands; each subcommand lives
//! in its own module. Today: `herald bench`. Later issues add `serve`,
//! `publish`, `tail`, `replay` and `dlq`.

mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// herald: typed events, commands and durable subscriptions.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the in-process bus: latency percentiles, sustained rate,
    /// throughput against raw tokio broadcast. Prints a table on stderr and
    /// one JSON object on stdout.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::main(args),
    }
}

//! The `herald` command-line tool.
//!
//! Owns argument parsing and dispatch to subcommands; each subcommand lives
//! in its own module (`bench`, `serve`, `token`); `exit` maps herald's error
//! codes to exit codes.

mod bench;
mod exit;
mod serve;
mod token;

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
    /// Run the HTTP/WebSocket gateway (default: SQLite under ./herald-data,
    /// listening on 127.0.0.1:7070).
    Serve(serve::Args),
    /// Make an API token: a new secret and its `[[tokens]]` table for herald.toml.
    Token(token::Args),
}

/// Log to stderr at info level (`RUST_LOG`-style filtering is not needed
/// by the tool's users; `HERALD_LOG=debug` raises it).
fn logging() {
    let level = match std::env::var("HERALD_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Token(args) => token::main(args),
    }
}

//! The `herald` command-line tool.
//!
//! Owns argument parsing and dispatch to subcommands; each subcommand lives
//! in its own module (`bench`, `serve`, `token`, `publish`, `tail`,
//! `replay`, `inspect` for topics and groups, `dlq`, `call`); `client` is
//! where they act (a server or a store), `exit` maps herald's error codes to
//! exit codes, `progress` draws progress bars.

mod backup;
mod bench;
mod call;
mod catalog;
mod client;
mod dlq;
mod exit;
mod inspect;
mod progress;
mod publish;
mod replay;
mod schema;
mod serve;
mod tail;
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
    /// Print the effective configuration and where each value came from
    /// (the same as `herald serve --print-config`).
    Config(serve::Args),
    /// Make an API token: a new secret and its `[[tokens]]` table for herald.toml.
    Token(token::Args),
    /// Publish events from arguments, a file, or NDJSON on stdin.
    Publish(publish::Args),
    /// Follow a topic pattern live.
    Tail(tail::Args),
    /// Print a topic's events from a seq or a time, as NDJSON.
    Replay(replay::Args),
    /// List topics with their last seq and rate.
    Topics(inspect::TopicsArgs),
    /// List consumer groups with their offsets and lag.
    Groups(inspect::Args),
    /// Dead letters: list, show, replay, purge.
    Dlq(dlq::Args),
    /// Call a command and print its response.
    Call(call::Args),
    /// Copy the embedded SQLite store into a new file, online.
    Backup(backup::Args),
    /// Contracts: register, list, show, check and delete schema subjects.
    Schema(schema::Args),
    /// The event catalog: each topic's owner, schema, producers, groups
    /// and rate, or the AsyncAPI 3.0 document (--asyncapi).
    Catalog(catalog::Args),
    /// A fault run: publishers, group members and a subscriber as
    /// processes, killed at seeded random moments; the history checked.
    Chaos(herald_chaos::cli::Args),
}

/// Run a client command's future on a fresh runtime; its error becomes
/// `error[CODE]: message` and the code's exit code.
fn run(work: impl std::future::Future<Output = herald::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return exit::fail(&herald::Error::internal(format!("runtime: {e}"))),
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(&e),
    }
}

/// `herald chaos`: exit 1 when the run found a violation.
fn chaos(args: herald_chaos::cli::Args) -> ExitCode {
    logging();
    // Before the runtime's threads exist.
    herald_chaos::cli::environment(&args);
    let passed = std::sync::atomic::AtomicBool::new(true);
    let code = run(async {
        passed.store(
            herald_chaos::cli::main(args).await?,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    });
    if passed.into_inner() {
        code
    } else {
        ExitCode::FAILURE
    }
}

/// Log to stderr, filtered by `HERALD_LOG` (else `RUST_LOG`, else `info`)
/// as tracing directives (`debug`, `info,herald::access=off`), as text
/// (colours only when stderr is a terminal) or, with
/// `HERALD_LOG_FORMAT=json`, one JSON object per line carrying the fields
/// of the spans it is in (a handled message's `correlation_id`, `topic`,
/// `seq`, `group`, …). A filter or format that does not parse falls back to
/// `info` or text and says so.
fn logging() {
    use std::io::IsTerminal;
    let directives = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(&directives) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    let format = herald::config::env("HERALD_LOG_FORMAT");
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.as_deref() {
        Some("json") => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    if let Some(e) = bad {
        tracing::warn!(%directives, error = %e, "HERALD_LOG does not parse; logging at info");
    }
    if let Some(other) = format.filter(|f| f != "json" && f != "text") {
        tracing::warn!(
            format = %other,
            "HERALD_LOG_FORMAT is not `text` or `json`; logging as text"
        );
    }
}

/// Large allocations (event payloads, WebSocket frames) are mapped and
/// unmapped on their own, so memory a burst took goes back to the system
/// when the burst is over. glibc otherwise raises this threshold the first
/// time such a block is freed and keeps later ones in its heap for good.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations() {
    // SAFETY: mallopt only changes the allocator's tuning; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations() {}

/// Counts each thread's heap, so `herald bench` measures what a structure
/// holds (see `bench::heap`).
#[global_allocator]
static ALLOCATOR: bench::heap::Counting = bench::heap::Counting;

fn main() -> ExitCode {
    return_large_allocations();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Config(args) => serve::print_config(args),
        Command::Token(args) => token::main(args),
        Command::Publish(args) => publish::main(args),
        Command::Tail(args) => tail::main(args),
        Command::Replay(args) => replay::main(args),
        Command::Topics(args) => inspect::topics(args),
        Command::Groups(args) => inspect::groups(args),
        Command::Dlq(args) => dlq::main(args),
        Command::Schema(args) => schema::main(args),
        Command::Catalog(args) => catalog::main(args),
        Command::Chaos(args) => chaos(args),
        Command::Call(args) => call::main(args),
        Command::Backup(args) => backup::main(args),
    }
}

//! `herald serve`: the gateway on the configured store.
//!
//! Owns the order settings are read in — the program's defaults (the
//! embedded store under `./herald-data`), then `herald.toml` (or
//! `--config`), then `HERALD_*` variables, then flags — opening the store,
//! and running `herald_server::Server` until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::config::DeliveryConfig;
use herald::{Config, Result};
use herald_server::{config, ServerConfig};

/// Options of `herald serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald serve                                  # SQLite under ./herald-data, 127.0.0.1:7070
  herald serve --store postgres://localhost/app
  herald serve --store nats://127.0.0.1:4222 --listen 0.0.0.0:7070 --config herald.toml
  herald serve --print-config                   # every setting, its value and origin (also: herald config)")]
pub struct Args {
    /// The TOML configuration file (default: the one HERALD_CONFIG names,
    /// else ./herald.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The store URL (HERALD_STORE): sqlite://PATH, postgres://…, nats://…, memory://.
    #[arg(long)]
    store: Option<String>,
    /// host:port to listen on (HERALD_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Print the effective configuration and where each value came from, then exit.
    #[arg(long)]
    print_config: bool,
}

/// Install the settings' layers; see the module.
pub fn configure(args: &Args) -> Result<()> {
    herald::config::set_defaults([("HERALD_STORE".to_owned(), config::DEFAULT_STORE.to_owned())]);
    let named = std::env::var_os(herald_store::file::CONFIG_FILE_KEY).filter(|p| !p.is_empty());
    let file = args
        .config
        .clone()
        .or(named.map(PathBuf::from))
        .or_else(|| {
            let default = PathBuf::from("herald.toml");
            default.exists().then_some(default)
        });
    if let Some(path) = file {
        config::load_file(&path)?;
    }
    let flags = [
        ("HERALD_STORE", &args.store),
        ("HERALD_LISTEN", &args.listen),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)));
    herald::config::set_command_line(flags);
    Ok(())
}

pub fn main(args: Args) -> ExitCode {
    if let Err(e) = configure(&args) {
        return crate::exit::fail(&e);
    }
    if args.print_config {
        return describe();
    }
    crate::logging();
    crate::run(run())
}

/// `herald config`: `--print-config` without serving.
pub fn print_config(args: Args) -> ExitCode {
    if let Err(e) = configure(&args) {
        return crate::exit::fail(&e);
    }
    describe()
}

/// Print every setting with its origin; fail as start-up would on a bad
/// one: the server's, the bus's and the store's settings are all read and
/// validated (without connecting to the store).
fn describe() -> ExitCode {
    print!("{}", config::describe());
    let checked = ServerConfig::from_env()
        .and_then(|_| DeliveryConfig::from_env())
        .and_then(|delivery| {
            Config::from_env_with(delivery.clone())?;
            herald_store::StoreConfig::from_env_with(delivery)
        });
    match checked {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => crate::exit::fail(&e),
    }
}

async fn run() -> Result<()> {
    let server_config = ServerConfig::from_env()?;
    let delivery = DeliveryConfig::from_env()?;
    let bus_config = Config::from_env_with(delivery.clone())?;
    if let Some(path) = server_config.store.strip_prefix("sqlite://") {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            // Owner only, like the store file itself (herald-sqlite makes it 0600).
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|e| {
                herald::config::invalid(
                    "HERALD_STORE",
                    &server_config.store,
                    &format!("a path whose directory can be created ({e})"),
                )
            })?;
        }
    }
    let store = herald_store::Store::from_env_with(delivery).await?;
    let bus = store.bus(bus_config)?;
    let server = herald_server::Server::new(bus, server_config, store.kind())?;
    server.serve(shutdown_signal()).await
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

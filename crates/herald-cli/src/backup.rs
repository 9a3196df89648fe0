//! `herald backup`: an online copy of the embedded SQLite store.
//!
//! Owns the command; the copy is `herald_sqlite::backup`'s. The other
//! stores are backed up with their own tools (`docs/operations.md`), which
//! the command names instead of pretending.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::{Error, Result};

/// Options of `herald backup`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald backup herald-backup.db                               # the store HERALD_STORE names (./herald-data/herald.db by default)
  herald backup --store sqlite://app.db /backups/app-$(date +%F).db

Restore: stop every process using the store, then copy the backup over the
store's file (and remove its -wal and -shm files). See docs/operations.md.")]
pub struct Args {
    /// The store to copy (default: HERALD_STORE, else the one `herald serve` uses).
    #[arg(long)]
    store: Option<String>,
    /// The new file to write; it must not exist.
    out: PathBuf,
}

pub fn main(args: Args) -> ExitCode {
    crate::run(async move {
        let url = args
            .store
            .or_else(|| herald::config::env("HERALD_STORE"))
            .unwrap_or_else(|| herald_server::config::DEFAULT_STORE.to_owned());
        let path = sqlite_path(&url)?;
        let written = herald_sqlite::backup(&path, &args.out).await?;
        println!(
            "{} → {}: {} pages, {} bytes",
            path.display(),
            args.out.display(),
            written.pages,
            written.bytes
        );
        Ok(())
    })
}

/// The file of a `sqlite://` store URL; another store's URL is refused with
/// the tool that backs it up.
fn sqlite_path(url: &str) -> Result<PathBuf> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(Error::validation("sqlite:// needs a path"));
        }
        return Ok(PathBuf::from(path));
    }
    let tool = match url.split_once("://").map(|(s, _)| s) {
        Some("postgres" | "postgresql") => "pg_dump --schema=<HERALD_PG_SCHEMA>",
        Some("nats" | "tls") => "nats stream backup",
        Some("kafka") => "your cluster's replication or MirrorMaker",
        Some("memory") => "nothing: the memory store keeps no data",
        _ => "a store URL",
    };
    Err(herald::config::invalid(
        "--store",
        herald::config::redact(url),
        &format!("a sqlite:// store; back this one up with {tool} (docs/operations.md)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_stores_are_copied_and_the_others_name_their_tool() {
        assert_eq!(
            sqlite_path("sqlite://./herald-data/herald.db").unwrap(),
            PathBuf::from("./herald-data/herald.db")
        );
        let pg = sqlite_path("postgres://u:pw@h/db").unwrap_err();
        assert_eq!(pg.code(), herald::ErrorCode::Validation);
        assert!(pg.to_string().contains("pg_dump"), "{pg}");
        assert!(!pg.to_string().contains("pw"), "{pg}");
        assert!(sqlite_path("sqlite://").is_err());
    }
}

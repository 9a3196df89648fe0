//! `herald token`: make an API token and the line `herald.toml` needs.

use std::process::ExitCode;

use herald_server::auth::{hash_token, new_secret};

/// Options of `herald token`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald token ci                 # a new secret for a token named `ci`, and its [[tokens]] table
  herald token ci --secret S      # the table for an existing secret S")]
pub struct Args {
    /// The token's name (shown in logs, never secret).
    name: String,
    /// Hash this secret instead of making a new one.
    #[arg(long)]
    secret: Option<String>,
}

pub fn main(args: Args) -> ExitCode {
    let secret = args.secret.unwrap_or_else(new_secret);
    eprintln!("secret (give it to the client; it is not stored): {secret}");
    println!(
        "[[tokens]]\nname = {:?}\nsha256 = {:?}\npublish = []\nsubscribe = []\ncall = []\nserve = []\ngroups = []\nschemas = []\nadmin = false",
        args.name,
        hash_token(&secret)
    );
    ExitCode::SUCCESS
}

//! `herald dlq list|show|replay|purge`: dead letters.

use std::process::ExitCode;

use herald::{Bus, Error, ErrorCode, Result};
use herald_server::dead_letters::DeadLetterView;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Connect, Target};

/// Options of `herald dlq`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald dlq list --topic 'orders.>' --code TIMEOUT
  herald dlq show 42
  herald dlq replay 42                 # one
  herald dlq replay --topic 'orders.>' # every one the filter selects
  herald dlq purge --group billing")]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    connect: Connect,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its envelope (JSON).
    Show {
        /// Its id.
        id: u64,
    },
    /// Re-publish dead letters to their topics, then delete them.
    Replay {
        /// One dead letter; without it, every one the filter selects.
        id: Option<u64>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Delete dead letters.
    Purge {
        /// One dead letter; without it, every one the filter selects.
        id: Option<u64>,
        #[command(flatten)]
        filter: Filter,
    },
}

/// Which dead letters.
#[derive(clap::Args, Debug, Default)]
struct Filter {
    /// Topic pattern.
    #[arg(long)]
    topic: Option<String>,
    /// The group that gave up.
    #[arg(long)]
    group: Option<String>,
    /// Error code (VALIDATION, TIMEOUT, …).
    #[arg(long)]
    code: Option<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

impl Filter {
    fn query(&self) -> String {
        let mut q = Vec::new();
        let enc = |s: &str| s.replace('>', "%3E").replace('*', "%2A");
        if let Some(t) = &self.topic {
            q.push(format!("topic={}", enc(t)));
        }
        if let Some(g) = &self.group {
            q.push(format!("group={}", enc(g)));
        }
        if let Some(c) = &self.code {
            q.push(format!("code={c}"));
        }
        if let Some(n) = self.limit {
            q.push(format!("limit={n}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }

    fn select(&self, bus: &Bus) -> Result<herald::DeadLetters> {
        let mut d = bus.dead_letters();
        if let Some(t) = &self.topic {
            herald::Pattern::new(t)?;
            d = d.topic(t);
        }
        if let Some(g) = &self.group {
            d = d.group(g.clone());
        }
        if let Some(c) = &self.code {
            d = d.code(c.parse::<ErrorCode>()?);
        }
        if let Some(n) = self.limit {
            d = d.limit(n);
        }
        Ok(d)
    }
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

async fn list(target: &Target, filter: &Filter, id: Option<u64>) -> Result<Vec<Value>> {
    match target {
        Target::Server { .. } => match id {
            Some(id) => Ok(vec![
                target
                    .request(Method::GET, &format!("/v1/dead-letters/{id}"), None)
                    .await?,
            ]),
            None => {
                let v: Value = target
                    .request(
                        Method::GET,
                        &format!("/v1/dead-letters{}", filter.query()),
                        None,
                    )
                    .await?;
                Ok(v["dead_letters"].as_array().cloned().unwrap_or_default())
            }
        },
        Target::Store(bus) => {
            let mut select = filter.select(bus)?;
            if let Some(id) = id {
                select = select.ids([id]);
            }
            let found = select.await?;
            if id.is_some() && found.is_empty() {
                return Err(Error::new(
                    ErrorCode::NotFound,
                    format!("no dead letter {}", id.unwrap_or_default()),
                ));
            }
            found
                .into_iter()
                .map(|d| {
                    serde_json::to_value(DeadLetterView::from(d))
                        .map_err(|e| Error::internal(e.to_string()))
                })
                .collect()
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let target = args.connect.open().await?;
    match args.action {
        Action::List { filter, json } => {
            let found = list(&target, &filter, None).await?;
            if json {
                found.iter().for_each(|d| println!("{d}"));
                return Ok(());
            }
            println!(
                "{:>6} {:<32} {:>8} {:<16} {:<12} REASON",
                "ID", "TOPIC", "SEQ", "GROUP", "CODE"
            );
            for d in &found {
                println!(
                    "{:>6} {:<32} {:>8} {:<16} {:<12} {}",
                    d["id"],
                    d["topic"].as_str().unwrap_or_default(),
                    d["seq"],
                    d["group"].as_str().unwrap_or("-"),
                    d["code"].as_str().unwrap_or_default(),
                    d["reason"].as_str().unwrap_or_default()
                );
            }
        }
        Action::Show { id } => {
            let found = list(&target, &Filter::default(), Some(id)).await?;
            let pretty = serde_json::to_string_pretty(&found[0])
                .map_err(|e| Error::internal(e.to_string()))?;
            println!("{pretty}");
        }
        Action::Replay { id, filter } => {
            let seqs: Vec<u64> = match (&target, id) {
                (Target::Server { .. }, Some(id)) => {
                    let v: Value = target
                        .request(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
                        .await?;
                    seqs_of(&v)
                }
                (Target::Server { .. }, None) => {
                    let v: Value = target
                        .request(
                            Method::POST,
                            &format!("/v1/dead-letters/replay{}", filter.query()),
                            None,
                        )
                        .await?;
                    seqs_of(&v)
                }
                (Target::Store(bus), id) => {
                    let mut select = filter.select(bus)?;
                    if let Some(id) = id {
                        list(&target, &filter, Some(id)).await?;
                        select = select.ids([id]);
                    }
                    select.replay().await?
                }
            };
            eprintln!("replayed {} dead letters", seqs.len());
        }
        Action::Purge { id, filter } => {
            let purged = match (&target, id) {
                (Target::Server { .. }, Some(id)) => {
                    let v: Value = target
                        .request(Method::DELETE, &format!("/v1/dead-letters/{id}"), None)
                        .await?;
                    v["purged"].as_u64().unwrap_or(0)
                }
                (Target::Server { .. }, None) => {
                    let v: Value = target
                        .request(
                            Method::POST,
                            &format!("/v1/dead-letters/purge{}", filter.query()),
                            None,
                        )
                        .await?;
                    v["purged"].as_u64().unwrap_or(0)
                }
                (Target::Store(bus), id) => {
                    let mut select = filter.select(bus)?;
                    if let Some(id) = id {
                        select = select.ids([id]);
                    }
                    select.purge().await?
                }
            };
            eprintln!("purged {purged} dead letters");
        }
    }
    Ok(())
}

fn seqs_of(v: &Value) -> Vec<u64> {
    v["seqs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_u64())
        .collect()
}

//! `herald schema register|list|show|check|delete`: the store's contracts
//! (schema subjects), through a server's `/v1/schemas` routes or on a
//! store directly (`--store`). `check` exits with `VALIDATION`'s code (3)
//! when the schema would break the subject, so a CI step can run it
//! before a producer ships a new schema.

use std::io::Read;
use std::process::ExitCode;

use herald::contract::{Compatibility, MAX_SCHEMA_BYTES};
use herald::{Error, ErrorCode, Result};
use herald_server::schemas::{BreakingView, SubjectView};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Connect, Target};

/// Options of `herald schema`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald schema register 'orders.*' order.schema.json --owner billing
  herald schema check 'orders.*' order.schema.json   # exit 3 when it breaks the subject
  herald schema list
  herald schema show 'orders.*' --version 2
  herald schema delete 'orders.*'")]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    connect: Connect,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Register a schema version under a subject (a topic pattern).
    Register {
        /// The subject.
        subject: String,
        /// The JSON Schema's file, or `-` for stdin.
        file: String,
        /// The owning team or service.
        #[arg(long)]
        owner: Option<String>,
        /// What travels on the subject's topics.
        #[arg(long)]
        description: Option<String>,
        /// The subject's mode from now on: backward (default), forward,
        /// full, their _transitive forms, none.
        #[arg(long)]
        compatibility: Option<String>,
    },
    /// List the subjects with their owner, mode and versions.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a subject (JSON), or one of its versions.
    Show {
        /// The subject.
        subject: String,
        /// Only this version's schema.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Say what registering a schema would break (nothing is stored);
    /// exit 3 when it breaks the subject.
    Check {
        /// The subject.
        subject: String,
        /// The JSON Schema's file, or `-` for stdin.
        file: String,
        /// Check by this mode instead of the subject's.
        #[arg(long)]
        compatibility: Option<String>,
    },
    /// Delete a subject and its versions.
    Delete {
        /// The subject.
        subject: String,
    },
}

pub fn main(args: Args) -> ExitCode {
    crate::run(run(args))
}

/// A schema read from `file` (`-`: stdin), at most [`MAX_SCHEMA_BYTES`].
fn read_schema(file: &str) -> Result<Value> {
    let mut text = Vec::new();
    let limit = MAX_SCHEMA_BYTES as u64 + 1;
    let read = if file == "-" {
        std::io::stdin().take(limit).read_to_end(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut text))
    };
    read.map_err(|e| Error::validation(format!("cannot read {file}: {e}")))?;
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(Error::validation(format!(
            "{file} is over {MAX_SCHEMA_BYTES} bytes, the largest schema herald takes"
        )));
    }
    serde_json::from_slice(&text).map_err(|e| Error::validation(format!("{file} is not JSON: {e}")))
}

fn mode(text: Option<&str>) -> Result<Option<Compatibility>> {
    text.map(str::parse).transpose()
}

/// The subject as a URL path segment.
fn segment(subject: &str) -> String {
    subject.replace('>', "%3E").replace('*', "%2A")
}

fn to_value(v: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(e.to_string()))
}

async fn run(args: Args) -> Result<()> {
    let target = args.connect.open().await?;
    match args.action {
        Action::Register {
            subject,
            file,
            owner,
            description,
            compatibility,
        } => {
            let schema = read_schema(&file)?;
            let version = match &target {
                Target::Server { .. } => {
                    let body = json!({
                        "subject": subject, "schema": schema, "owner": owner,
                        "description": description, "compatibility": compatibility,
                    });
                    let v: Value = target
                        .request(Method::POST, "/v1/schemas", Some(&body))
                        .await?;
                    v["version"].as_u64().unwrap_or_default()
                }
                Target::Store(bus) => {
                    let mut register = bus.schemas().register(&subject, schema);
                    if let Some(o) = owner {
                        register = register.owner(o);
                    }
                    if let Some(d) = description {
                        register = register.description(d);
                    }
                    if let Some(m) = mode(compatibility.as_deref())? {
                        register = register.compatibility(m);
                    }
                    u64::from(register.await?.version)
                }
            };
            println!("{subject} version {version}");
        }
        Action::List { json } => {
            let subjects: Vec<Value> = match &target {
                Target::Server { .. } => {
                    let v: Value = target.request(Method::GET, "/v1/schemas", None).await?;
                    v["subjects"].as_array().cloned().unwrap_or_default()
                }
                Target::Store(bus) => bus
                    .schemas()
                    .list()
                    .await?
                    .into_iter()
                    .map(|s| to_value(SubjectView::from(s)))
                    .collect::<Result<_>>()?,
            };
            if json {
                subjects.iter().for_each(|s| println!("{s}"));
                return Ok(());
            }
            println!(
                "{:<32} {:<16} {:<20} {:>8}",
                "SUBJECT", "OWNER", "COMPATIBILITY", "VERSIONS"
            );
            for s in &subjects {
                println!(
                    "{:<32} {:<16} {:<20} {:>8}",
                    s["subject"].as_str().unwrap_or_default(),
                    s["owner"].as_str().unwrap_or("-"),
                    s["compatibility"].as_str().unwrap_or_default(),
                    s["versions"].as_array().map_or(0, Vec::len)
                );
            }
        }
        Action::Show { subject, version } => {
            let shown: Value = match (&target, version) {
                (Target::Server { .. }, Some(n)) => {
                    let path = format!("/v1/schemas/{}/versions/{n}", segment(&subject));
                    target.request(Method::GET, &path, None).await?
                }
                (Target::Server { .. }, None) => {
                    let path = format!("/v1/schemas/{}", segment(&subject));
                    target.request(Method::GET, &path, None).await?
                }
                (Target::Store(bus), Some(n)) => {
                    let v = bus.schemas().version(&subject, n).await?;
                    to_value(herald_server::schemas::VersionView::from(v))?
                }
                (Target::Store(bus), None) => {
                    to_value(SubjectView::from(bus.schemas().get(&subject).await?))?
                }
            };
            let pretty =
                serde_json::to_string_pretty(&shown).map_err(|e| Error::internal(e.to_string()))?;
            println!("{pretty}");
        }
        Action::Check {
            subject,
            file,
            compatibility,
        } => {
            let schema = read_schema(&file)?;
            let breaking: Vec<BreakingView> = match &target {
                Target::Server { .. } => {
                    let path = format!("/v1/schemas/{}/check", segment(&subject));
                    let body = json!({"schema": schema, "compatibility": compatibility});
                    let v: Value = target.request(Method::POST, &path, Some(&body)).await?;
                    serde_json::from_value(v["breaking"].clone())
                        .map_err(|e| Error::internal(format!("unexpected answer: {e}")))?
                }
                Target::Store(bus) => bus
                    .schemas()
                    .check(&subject, &schema, mode(compatibility.as_deref())?)
                    .await?
                    .into_iter()
                    .map(BreakingView::from)
                    .collect(),
            };
            if breaking.is_empty() {
                println!("{subject}: compatible");
                return Ok(());
            }
            for b in &breaking {
                let at = if b.path.is_empty() { "(root)" } else { &b.path };
                println!("against version {} at {at}: {}", b.version, b.change);
            }
            return Err(Error::new(
                ErrorCode::Validation,
                format!(
                    "the schema breaks subject {subject} ({} changes)",
                    breaking.len()
                ),
            ));
        }
        Action::Delete { subject } => {
            match &target {
                Target::Server { .. } => {
                    let path = format!("/v1/schemas/{}", segment(&subject));
                    target.request::<Value>(Method::DELETE, &path, None).await?;
                }
                Target::Store(bus) => bus.schemas().delete(&subject).await?,
            }
            println!("{subject} deleted");
        }
    }
    Ok(())
}

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

/// Options of `herald topics`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  herald topics
  herald topics --store kafka://127.0.0.1:9092
  herald topics create orders.placed --partitions 12 --store kafka://127.0.0.1:9092
  herald topics partitions orders.placed 24 --store kafka://127.0.0.1:9092
  herald topics delete orders.placed --store kafka://127.0.0.1:9092")]
pub struct TopicsArgs {
    #[command(subcommand)]
    action: Option<TopicAction>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: Connect,
}

/// What `herald topics` does besides listing.
#[derive(clap::Subcommand, Debug)]
enum TopicAction {
    /// Create a topic with a partition count (Kafka stores; other stores
    /// make a topic on its first publish).
    Create {
        /// The herald topic (the Kafka topic is `<HERALD_ENVIRONMENT>.<topic>`).
        topic: String,
        /// Its partitions, 1–10000 (default HERALD_KAFKA_PARTITIONS).
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Raise a topic's partition count (Kafka stores; a count cannot be
    /// lowered). Keys move to other partitions: a key's events published
    /// before and after may be delivered out of order until the old ones
    /// are consumed.
    Partitions {
        /// The herald topic.
        topic: String,
        /// Its new partition count, 1–10000, at least its current one.
        partitions: u32,
    },
    /// Delete a topic and every event in it (Kafka stores).
    Delete {
        /// The herald topic.
        topic: String,
    },
}

pub fn topics(args: TopicsArgs) -> ExitCode {
    crate::run(async move {
        if let Some(action) = args.action {
            return manage(action, &args.connect).await;
        }
        let list = args.connect.open().await?.topics().await?;
        if args.json {
            list.iter().for_each(|t| println!("{t}"));
            return Ok(());
        }
        println!(
            "{:<40} {:>12} {:>10} {:>10}",
            "TOPIC", "LAST SEQ", "PARTITIONS", "EVENTS/S"
        );
        for t in &list {
            println!(
                "{:<40} {:>12} {:>10} {:>10}",
                t["topic"].as_str().unwrap_or_default(),
                t["last_seq"],
                t["partitions"],
                t["rate"]
                    .as_f64()
                    .map_or("-".to_owned(), |r| format!("{r:.1}"))
            );
        }
        Ok::<(), herald::Error>(())
    })
}

/// Create, grow or delete a topic on the Kafka store `--store` names.
async fn manage(action: TopicAction, connect: &Connect) -> herald::Result<()> {
    let store = connect.open_store().await?;
    let Some(herald_store::Store::Kafka(kafka)) = &store else {
        return Err(herald::config::invalid(
            "--store",
            store.as_ref().map_or("(none: a server)", |s| s.kind()),
            "kafka://HOST:PORT: topics are created and deleted on Kafka stores; the others make a topic on its first publish",
        ));
    };
    let result = match action {
        TopicAction::Create { topic, partitions } => {
            let topic = herald::Topic::new(topic)?;
            let n = partitions.unwrap_or(kafka.config().partition_count());
            kafka.create_topic(&topic, n).await.map(|()| {
                eprintln!("created {topic} ({n} partitions)");
            })
        }
        TopicAction::Partitions { topic, partitions } => {
            let topic = herald::Topic::new(topic)?;
            kafka
                .grow_partitions(&topic, partitions)
                .await
                .map(|had| eprintln!("{topic}: {had} → {partitions} partitions"))
        }
        TopicAction::Delete { topic } => {
            let topic = herald::Topic::new(topic)?;
            kafka
                .delete_topic(&topic)
                .await
                .map(|()| eprintln!("deleted {topic}"))
        }
    };
    kafka.close().await;
    result
}

/// One member's health as `herald groups` prints it.
fn member_line(m: &serde_json::Value) -> String {
    let oldest = m["oldest_in_flight_ms"].as_u64().map_or_else(
        || "-".to_owned(),
        |ms| format!("{:.1}s", ms as f64 / 1000.0),
    );
    format!(
        "member {} {}: {} in flight (oldest {oldest}), last poll {}, last progress {}",
        m["member"].as_str().unwrap_or_default(),
        m["state"].as_str().unwrap_or_default(),
        m["in_flight"],
        m["last_poll"].as_str().unwrap_or("never"),
        m["last_progress"].as_str().unwrap_or_default(),
    )
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
            for m in g["members"].as_array().into_iter().flatten() {
                println!("  {}", member_line(m));
            }
        }
        Ok::<(), herald::Error>(())
    })
}

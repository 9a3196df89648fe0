//! What checking a publish against its topic's schema costs: the same
//! batches of a 10-field payload published on the memory store with no
//! subject for their topic (the baseline) and with one, in the same run,
//! best of three rounds each.

use std::time::Instant;

use herald::{Bus, Message, Payload};
use serde::Serialize;
use serde_json::json;

/// Events per `publish`.
const BATCH: usize = 100;

/// The added cost per event herald aims for (issue goal).
pub const ADDED_GOAL_US: f64 = 2.0;
/// The required bound on it.
pub const ADDED_BOUND_US: f64 = 20.0;

/// Microseconds per event published, without and with a schema.
#[derive(Debug, Clone, Serialize)]
pub struct Contracts {
    pub events: u64,
    pub fields: usize,
    /// No subject for the topic: the raw publish path.
    pub plain_us: f64,
    /// A subject whose schema types and requires every field.
    pub checked_us: f64,
    /// `checked_us - plain_us`.
    pub added_us: f64,
}

/// Publish `events` events each way, three rounds, taking each way's best.
pub async fn run(events: u64) -> herald::Result<Contracts> {
    let fields: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let payload = Payload::json(&json!({
        "f0": "order-7", "f1": 42, "f2": 101.5, "f3": true, "f4": "EUR",
        "f5": "2026-12-07T10:00:00Z", "f6": 3, "f7": "express", "f8": false, "f9": "eu-west"
    }))?;
    let types = [
        "string", "integer", "number", "boolean", "string", "string", "integer", "string",
        "boolean", "string",
    ];
    let properties: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.clone(), json!({"type": types[i]})))
        .collect();
    let schema = json!({"type": "object", "required": fields, "properties": properties});
    let (mut plain, mut checked) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        plain = plain.min(per_event(events, &payload, None).await?);
        checked = checked.min(per_event(events, &payload, Some(&schema)).await?);
    }
    Ok(Contracts {
        events,
        fields: fields.len(),
        plain_us: plain,
        checked_us: checked,
        added_us: checked - plain,
    })
}

/// µs per event of publishing `events` copies of `payload` in batches, on a
/// fresh bus with `schema` registered for the topic, or none.
async fn per_event(
    events: u64,
    payload: &Payload,
    schema: Option<&serde_json::Value>,
) -> herald::Result<f64> {
    let bus = Bus::builder().instrument(false).build()?;
    if let Some(schema) = schema {
        bus.schemas()
            .register("bench.contract.*", schema.clone())
            .await?;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < events {
        let n = (BATCH as u64).min(events - sent);
        let batch: Vec<Message> = (0..n)
            .map(|_| Message::new("bench.contract.placed", payload.clone()))
            .collect();
        bus.publish(batch).await?;
        sent += n;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / events as f64;
    bus.close().await?;
    Ok(us)
}

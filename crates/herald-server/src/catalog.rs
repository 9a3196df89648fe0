//! The event catalog: what travels on the bus, who owns it, who publishes
//! it and who consumes it, read live from the store.
//!
//! Owns [`Catalog`] (gathered from a bus: schema subjects, topics, durable
//! groups, the bus's command handlers, and each topic's producers as the
//! `source` of its newest events), its AsyncAPI 3.0 rendering
//! ([`Catalog::asyncapi`], served as `GET /v1/asyncapi.json` and printed by
//! `herald catalog --asyncapi`) and its table (`herald catalog`). What a
//! caller may see is the route's; the contracts themselves are
//! `herald::contract`'s.
//!
//! One channel per subject (its pattern) and one per topic no subject
//! covers, plus one per command topic. A channel's `x-herald` extension
//! carries what the table shows (owner, schema version, producers,
//! groups, rate), so a client renders the table from the document alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::HOST;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use chrono::Utc;
use futures_util::{stream, StreamExt};
use herald::contract::{overlap, Subject};
use herald::{Bus, Envelope, Error, ErrorCode, GroupInfo, Pattern, StartPosition, TopicInfo};
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Permission};
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

/// The longest a catalog is gathered for before `TIMEOUT`.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(20);

/// The newest events of a topic read for its producers.
pub const PRODUCER_SAMPLE: usize = 50;
/// The most topics whose producers are sampled (the rest list none).
pub const MAX_SAMPLED_TOPICS: usize = 256;
/// Topics sampled at once.
const SAMPLE_CONCURRENCY: usize = 8;
/// The most channels a catalog holds.
pub const MAX_CHANNELS: usize = 10_000;
/// The window a rate estimated from sampled events covers.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// What a catalog channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Events on a topic pattern with a schema subject.
    Subject,
    /// Events on a topic no subject covers.
    Topic,
    /// Commands this bus handles.
    Command,
}

/// One channel of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Channel {
    /// Its topic or topic pattern.
    pub pattern: String,
    pub kind: ChannelKind,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// Its latest schema version.
    pub schema_version: Option<u32>,
    /// That version's schema.
    #[serde(skip)]
    pub schema: Option<Value>,
    /// The live topics it covers.
    pub topics: Vec<String>,
    /// Services whose events are among its topics' newest.
    pub producers: Vec<String>,
    /// Durable groups following it.
    pub groups: Vec<String>,
    /// Events per second over its topics.
    pub rate: f64,
    /// The most partitions of its topics (1 unless the store partitions).
    pub partitions: u32,
}

/// Where the bus is reached, for the document's servers.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// The HTTP/WebSocket gateway's `host:port`, and whether it is TLS.
    pub gateway: Option<(String, bool)>,
    /// The store's URL (credentials are never shown).
    pub store: Option<String>,
}

/// The bus as a catalog; see the module docs.
#[derive(Debug, Clone, Serialize)]
pub struct Catalog {
    pub channels: Vec<Channel>,
}

impl Catalog {
    /// Read the catalog of `bus`: the channels `visible` admits, their
    /// rates from `rate` (else estimated from the sampled events: of the
    /// newest [`PRODUCER_SAMPLE`], those of the last minute).
    pub async fn gather(
        bus: &Bus,
        visible: impl Fn(&str) -> bool,
        rate: impl Fn(&TopicInfo) -> Option<f64>,
    ) -> herald::Result<Catalog> {
        let subjects = unless_unsupported(bus.schemas().list().await)?;
        let topics = bus.topics().await?;
        let groups = unless_unsupported(bus.groups().await)?;
        let mut channels: Vec<Channel> = subjects
            .iter()
            .filter(|s| visible(s.pattern.as_str()))
            .map(subject_channel)
            .collect();
        let samples = sample(bus, &topics).await;
        for t in &topics {
            let topic = t.topic.as_str();
            let index = match subjects.iter().position(|s| s.pattern.matches(&t.topic)) {
                Some(_) => channels
                    .iter()
                    .position(|c| c.kind == ChannelKind::Subject && covers(&c.pattern, topic)),
                None if visible(topic) && channels.len() < MAX_CHANNELS => {
                    channels.push(Channel::new(topic, ChannelKind::Topic));
                    Some(channels.len() - 1)
                }
                None => None,
            };
            let Some(channel) = index.map(|i| &mut channels[i]) else {
                continue;
            };
            channel.topics.push(topic.to_string());
            channel.partitions = channel.partitions.max(t.partitions);
            let sampled = samples.get(topic).map(Vec::as_slice).unwrap_or_default();
            channel.rate += rate(t).unwrap_or_else(|| estimate_rate(sampled));
            for e in sampled {
                if !channel.producers.iter().any(|p| p == e.source()) {
                    channel.producers.push(e.source().to_string());
                }
            }
        }
        for command in bus.commands() {
            if visible(command.as_str()) && channels.len() < MAX_CHANNELS {
                channels.push(Channel::new(command.as_str(), ChannelKind::Command));
            }
        }
        for channel in &mut channels {
            if channel.kind != ChannelKind::Command {
                channel.groups = following(&groups, channel);
            }
            channel.producers.sort();
        }
        channels.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        Ok(Catalog { channels })
    }

    /// The catalog as an AsyncAPI 3.0 document: a channel per
    /// [`Channel`] (its address the pattern, a `*` or `>` a parameter),
    /// its message the latest schema, a `send` operation per producer, a
    /// `receive` operation per group (its name in `x-herald-group`: a
    /// herald group is not the broker's own consumer group or queue, so no
    /// binding claims one) and per command handled, a Kafka channel's
    /// partitions as its binding, and the servers at `endpoints`.
    pub fn asyncapi(&self, endpoints: &Endpoints) -> Value {
        let mut ids = Ids::default();
        let mut channels = serde_json::Map::new();
        let mut operations = serde_json::Map::new();
        let mut messages = serde_json::Map::new();
        let store = endpoints.store.as_deref().map(store_server);
        let protocol = store.as_ref().map(|(name, _)| *name);
        for c in &self.channels {
            let id = ids.take(&c.pattern);
            let (address, parameters) = address_of(&c.pattern);
            let mut channel = json!({
                "address": address,
                "title": c.pattern,
                "x-herald": c,
            });
            if let Some(text) = &c.description {
                channel["description"] = json!(text);
            }
            if !parameters.is_empty() {
                channel["parameters"] = Value::Object(parameters);
            }
            if protocol == Some("kafka") && c.kind != ChannelKind::Command {
                channel["bindings"] =
                    json!({"kafka": {"partitions": c.partitions, "bindingVersion": "0.5.0"}});
            }
            let message_ref = c
                .schema
                .as_ref()
                .zip(c.schema_version)
                .map(|(schema, version)| {
                    let mut payload = schema.clone();
                    if let Some(obj) = payload.as_object_mut() {
                        obj.remove("$schema");
                        obj.remove("$id");
                    }
                    messages.insert(
                        id.clone(),
                        json!({
                            "name": id,
                            "title": format!("{} v{version}", c.pattern),
                            "contentType": "application/json",
                            "payload": payload,
                            "x-herald-schema-version": version,
                        }),
                    );
                    channel["messages"] =
                        json!({ id.clone(): {"$ref": format!("#/components/messages/{id}")} });
                    json!([{"$ref": format!("#/channels/{id}/messages/{id}")}])
                });
            let mut operation =
                |op_id: String, action: &str, title: String, group: Option<Value>| {
                    let mut op = json!({
                        "action": action,
                        "channel": {"$ref": format!("#/channels/{id}")},
                        "title": title,
                    });
                    if let Some(m) = &message_ref {
                        op["messages"] = m.clone();
                    }
                    if let Some(g) = group {
                        op["x-herald-group"] = g;
                    }
                    operations.insert(ids.take(&op_id), op);
                };
            for producer in &c.producers {
                operation(
                    format!("{producer}.sends.{id}"),
                    "send",
                    format!("{producer} publishes {}", c.pattern),
                    None,
                );
            }
            for group in &c.groups {
                operation(
                    format!("{group}.receives.{id}"),
                    "receive",
                    format!("group {group} consumes {}", c.pattern),
                    Some(json!(group)),
                );
            }
            if c.kind == ChannelKind::Command {
                operation(
                    format!("handles.{id}"),
                    "receive",
                    format!("answers the command {}", c.pattern),
                    None,
                );
            }
            channels.insert(id, channel);
        }
        let mut doc = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": "herald",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "The live contracts of a herald bus: every topic, its schema and owner, who publishes it and which groups consume it.",
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": {"messages": messages},
        });
        let servers = servers(endpoints.gateway.as_ref(), store);
        if !servers.is_empty() {
            doc["servers"] = Value::Object(servers);
        }
        doc
    }
}

/// The live bus as an AsyncAPI 3.0 document: the channels the caller may
/// read (a subject or topic its `schemas`, `publish` or `subscribe` grant
/// covers, a command its `call` grant covers; `admin` sees all), the
/// servers the gateway (as the request's `Host` names it) and the store.
#[utoipa::path(get, path = "/v1/asyncapi.json", tag = "schemas",
    responses((status = 200, description = "An AsyncAPI 3.0 document", body = Object),
        (status = 401, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("token" = [])))]
pub async fn asyncapi(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let now = Instant::now();
    let visible = move |pattern: &str| {
        crate::schemas::may_read(&caller, pattern)
            || caller.require(Permission::Call, pattern).is_ok()
    };
    let rates = state.rates.clone();
    let rate = move |t: &TopicInfo| Some(rates.rate(t.topic.as_str(), now, t.last_seq));
    let catalog = tokio::time::timeout(GATHER_TIMEOUT, Catalog::gather(&state.bus, visible, rate))
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::Timeout,
                format!("the catalog was not read within {GATHER_TIMEOUT:?}"),
            )
        })??;
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| state.config.listen.to_string(), str::to_string);
    let endpoints = Endpoints {
        gateway: Some((host, state.config.tls.is_some())),
        store: Some(state.config.store.clone()),
    };
    Ok(Json(catalog.asyncapi(&endpoints)))
}

impl Channel {
    fn new(pattern: &str, kind: ChannelKind) -> Channel {
        Channel {
            pattern: pattern.to_string(),
            kind,
            owner: None,
            description: None,
            schema_version: None,
            schema: None,
            topics: Vec::new(),
            producers: Vec::new(),
            groups: Vec::new(),
            rate: 0.0,
            partitions: 1,
        }
    }
}

/// What a store answered, or nothing where it keeps no such thing
/// (`UNAVAILABLE`: no contracts, no durable groups).
fn unless_unsupported<T: Default>(read: herald::Result<T>) -> herald::Result<T> {
    match read {
        Err(e) if e.code() == ErrorCode::Unavailable => Ok(T::default()),
        other => other,
    }
}

fn subject_channel(s: &Subject) -> Channel {
    let mut c = Channel::new(s.pattern.as_str(), ChannelKind::Subject);
    c.owner.clone_from(&s.owner);
    c.description.clone_from(&s.description);
    c.schema_version = s.latest().map(|v| v.version);
    c.schema = s.latest().map(|v| v.schema.clone());
    c
}

/// Whether pattern `outer` matches `topic`.
fn covers(outer: &str, topic: &str) -> bool {
    match (Pattern::new(outer), herald::Topic::new(topic)) {
        (Ok(p), Ok(t)) => p.matches(&t),
        _ => false,
    }
}

/// The groups following `channel`: on one of its topics, or by a pattern
/// overlapping its own.
fn following(groups: &[GroupInfo], channel: &Channel) -> Vec<String> {
    let Ok(own) = Pattern::new(&channel.pattern) else {
        return Vec::new();
    };
    let mut names: BTreeSet<String> = BTreeSet::new();
    for g in groups {
        let on_topic = g
            .topics
            .iter()
            .any(|t| channel.topics.iter().any(|c| c == t.topic.as_str()));
        let by_pattern = g
            .patterns
            .iter()
            .filter_map(|p| Pattern::new(p).ok())
            .any(|p| overlap(&p, &own));
        if on_topic || by_pattern {
            names.insert(g.name.clone());
        }
    }
    names.into_iter().collect()
}

/// The newest [`PRODUCER_SAMPLE`] events of the first
/// [`MAX_SAMPLED_TOPICS`] topics, by topic; a topic that cannot be read
/// has none.
async fn sample(bus: &Bus, topics: &[TopicInfo]) -> HashMap<String, Vec<Envelope>> {
    let reads: Vec<_> = topics
        .iter()
        .take(MAX_SAMPLED_TOPICS)
        .map(|t| {
            let (bus, topic) = (bus.clone(), t.topic.to_string());
            let from = t.last_seq.saturating_sub(PRODUCER_SAMPLE as u64 - 1).max(1);
            async move {
                let events = bus
                    .replay(&topic, StartPosition::Seq(from), PRODUCER_SAMPLE)
                    .await
                    .unwrap_or_default();
                (topic, events)
            }
        })
        .collect();
    stream::iter(reads)
        .buffer_unordered(SAMPLE_CONCURRENCY)
        .collect()
        .await
}

/// Events per second over the last minute, from the newest events: those
/// of the last minute over the minute, or, when every sampled event is of
/// the last minute, over the time since the oldest.
fn estimate_rate(newest: &[Envelope]) -> f64 {
    let now = Utc::now();
    let window = chrono::Duration::from_std(RATE_WINDOW).unwrap_or_default();
    let recent: Vec<_> = newest
        .iter()
        .map(Envelope::timestamp)
        .filter(|t| now - *t <= window)
        .collect();
    let full = newest.len() >= PRODUCER_SAMPLE && recent.len() == newest.len();
    match recent.iter().min() {
        Some(oldest) if full => {
            let span = (now - *oldest).num_milliseconds().max(1) as f64 / 1000.0;
            recent.len() as f64 / span
        }
        _ => recent.len() as f64 / RATE_WINDOW.as_secs_f64(),
    }
}

/// A pattern's AsyncAPI address: each `*` the parameter `segmentN`, a `>`
/// the parameter `rest`.
fn address_of(pattern: &str) -> (String, serde_json::Map<String, Value>) {
    let mut params = serde_json::Map::new();
    let mut n = 0;
    let segments: Vec<String> = pattern
        .split('.')
        .map(|s| match s {
            "*" => {
                n += 1;
                let name = format!("segment{n}");
                params.insert(name.clone(), json!({"description": "any one segment"}));
                format!("{{{name}}}")
            }
            ">" => {
                params.insert(
                    "rest".into(),
                    json!({"description": "one or more segments"}),
                );
                "{rest}".into()
            }
            s => s.to_string(),
        })
        .collect();
    (segments.join("."), params)
}

/// The store as a server: its protocol and its first host, without
/// credentials; `None` for a store with no network endpoint of its own
/// (memory, SQLite) or one AsyncAPI names no binding for.
fn store_server(url: &str) -> (&'static str, Option<String>) {
    let (scheme, rest) = url.split_once("://").unwrap_or((url, ""));
    let host = rest
        .rsplit_once('@')
        .map_or(rest, |(_, h)| h)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    match scheme {
        "kafka" => ("kafka", Some(host)),
        "nats" | "tls" => ("nats", Some(host)),
        "postgres" | "postgresql" => ("postgresql", Some(host)),
        "sqlite" => ("sqlite", None),
        _ => ("memory", None),
    }
}

fn servers(
    gateway: Option<&(String, bool)>,
    store: Option<(&'static str, Option<String>)>,
) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if let Some((host, tls)) = gateway {
        let (http, ws) = if *tls {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        out.insert(
            "gateway".into(),
            json!({"host": host, "protocol": http, "pathname": "/v1", "title": "herald serve: HTTP", "description": "Publish, call, replay and inspect over HTTP (see /openapi.json)."}),
        );
        out.insert(
            "gateway-ws".into(),
            json!({"host": host, "protocol": ws, "pathname": crate::WS_PATH, "title": "herald serve: WebSocket", "description": "Subscribe, publish and handle commands over one WebSocket."}),
        );
    }
    if let Some((protocol, Some(host))) = store {
        if !host.is_empty() && protocol != "postgresql" {
            let mut server = json!({"host": host, "protocol": protocol, "title": format!("the store ({protocol})")});
            if protocol == "kafka" {
                server["bindings"] = json!({"kafka": {"bindingVersion": "0.5.0"}});
            }
            out.insert("store".into(), server);
        }
    }
    out
}

/// Unique AsyncAPI ids (`[A-Za-z0-9._-]`) for names that may hold other
/// characters.
#[derive(Default)]
struct Ids {
    taken: BTreeMap<String, u32>,
}

impl Ids {
    fn take(&mut self, name: &str) -> String {
        let base: String = name
            .chars()
            .map(|c| match c {
                '*' => 'X',
                '>' => 'R',
                c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') => c,
                _ => '_',
            })
            .collect();
        let n = self.taken.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}-{n}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_an_address_with_parameters() {
        let (address, params) = address_of("orders.*.eu.>");
        assert_eq!(address, "orders.{segment1}.eu.{rest}");
        assert_eq!(params.len(), 2);
        assert_eq!(address_of("orders.placed").0, "orders.placed");
    }

    #[test]
    fn a_store_url_shows_no_credentials() {
        let (p, host) = store_server("nats://user:secret@10.0.0.1:4222,10.0.0.2:4222");
        assert_eq!((p, host.as_deref()), ("nats", Some("10.0.0.1:4222")));
        let (p, host) = store_server("postgres://app:pw@db:5432/app?schema=x");
        assert_eq!((p, host.as_deref()), ("postgresql", Some("db:5432")));
        assert_eq!(store_server("sqlite://herald.db"), ("sqlite", None));
    }

    #[test]
    fn ids_are_unique_and_in_the_allowed_characters() {
        let mut ids = Ids::default();
        assert_eq!(ids.take("orders.*"), "orders.X");
        assert_eq!(ids.take("orders/*"), "orders_X");
        assert_eq!(ids.take("orders_X"), "orders_X-2");
    }
}

//! Where a command acts: a running server (`--server URL`, `HERALD_SERVER`,
//! default `http://127.0.0.1:7070`, with `--token`/`HERALD_TOKEN`) or,
//! with `--store URL`, a store opened directly in this process.
//!
//! Owns [`Target`] and the operations every command shares — publish,
//! replay a page, list topics and groups, dead letters, call — so each
//! command is written once for both. Over HTTP, an error answer's `code`
//! becomes the same `herald::Error` the store would have returned, so exit
//! codes agree.

use herald::{Bus, Error, ErrorCode, Result, StartPosition};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// The default server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// The server's URL (HERALD_SERVER; default http://127.0.0.1:7070).
    #[arg(long, global = true)]
    server: Option<String>,
    /// The API token (HERALD_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Act on this store directly instead of a server: sqlite://PATH,
    /// postgres://…, nats://…, kafka://HOST:PORT (its other settings from
    /// HERALD_* as in `herald serve`)
    #[arg(long, global = true)]
    store: Option<String>,
}

/// A server or a store.
pub enum Target {
    /// A running `herald serve`.
    Server {
        /// Base URL, without a trailing slash.
        base: String,
        /// Bearer token.
        token: Option<String>,
        /// The HTTP client.
        http: reqwest::Client,
    },
    /// A store opened in this process.
    Store(Bus),
}

impl Connect {
    /// The URL `--store` names.
    pub fn store_url(&self) -> Option<String> {
        self.store.clone()
    }

    /// The store `--store` names, opened with the rest of its settings from
    /// `HERALD_*` (the flag stands above `HERALD_STORE`); `None` without
    /// `--store`.
    pub async fn open_store(&self) -> Result<Option<herald_store::Store>> {
        let Some(url) = &self.store else {
            return Ok(None);
        };
        herald::config::set_command_line([("HERALD_STORE".to_owned(), url.clone())]);
        herald_store::Store::from_env().await.map(Some)
    }

    /// Open the target these options name.
    pub async fn open(&self) -> Result<Target> {
        if let Some(store) = self.open_store().await? {
            return Ok(Target::Store(store.bus(herald::Config::from_env()?)?));
        }
        let base = self
            .server
            .clone()
            .or_else(|| herald::config::env("HERALD_SERVER"))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(herald::config::invalid(
                "--server",
                &base,
                "an http:// or https:// URL",
            ));
        }
        Ok(Target::Server {
            base: base.trim_end_matches('/').to_owned(),
            token: self
                .token
                .clone()
                .or_else(|| herald::config::env("HERALD_TOKEN")),
            http: reqwest::Client::new(),
        })
    }
}

/// An `herald::Error` from a server's error answer (or a transport failure).
fn answer_error(status: u16, body: &Value) -> Error {
    let code = body["code"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            _ => ErrorCode::Internal,
        });
    let message = body["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    Error::new(code, message)
}

impl Target {
    /// The WebSocket URL of a server target (with the token as `?token=`).
    pub fn ws_url(&self) -> Option<String> {
        match self {
            Target::Server { base, token, .. } => {
                let ws = base.replacen("http", "ws", 1);
                Some(match token {
                    Some(t) => format!(
                        "{ws}/v1/ws?token={}",
                        percent_encoding::utf8_percent_encode(
                            t,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ),
                    None => format!("{ws}/v1/ws"),
                })
            }
            Target::Store(_) => None,
        }
    }

    /// `method path` with an optional JSON body, decoded as `T`.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let Target::Server { base, token, http } = self else {
            return Err(Error::internal("not a server target"));
        };
        // Every request says JSON, bodies or not: the server refuses a
        // POST or DELETE without it (a browser form cannot send it).
        let mut req = http
            .request(method, format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| Error::new(ErrorCode::Unavailable, format!("cannot reach {base}: {e}")))?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .await
            .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !(200..300).contains(&status) {
            return Err(answer_error(status, &value));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::internal(format!("unexpected answer: {e}")))
    }

    /// Publish `messages` (each a JSON object in the HTTP API's message
    /// shape) to `topic` as one batch; each event's `seq`.
    pub async fn publish(&self, topic: &str, messages: Vec<Value>) -> Result<Vec<u64>> {
        match self {
            Target::Server { .. } => {
                let answer: Value = self
                    .request(
                        reqwest::Method::POST,
                        &format!("/v1/topics/{topic}/events"),
                        Some(&Value::Array(messages)),
                    )
                    .await?;
                Ok(answer["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["seq"].as_u64())
                    .collect())
            }
            Target::Store(bus) => {
                let batch = messages
                    .into_iter()
                    .map(|m| to_message(topic, m))
                    .collect::<Result<Vec<_>>>()?;
                bus.publish(batch).await
            }
        }
    }

    /// One page of `topic` from `from`: the events as JSON, and where the next page starts.
    pub async fn replay(
        &self,
        topic: &str,
        from: StartPosition,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>)> {
        match self {
            Target::Server { .. } => {
                let query = match from {
                    StartPosition::Seq(n) => format!("from_seq={n}&"),
                    StartPosition::Time(t) => format!(
                        "since={}&",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                    _ => String::new(),
                };
                let page: Value = self
                    .request(
                        reqwest::Method::GET,
                        &format!("/v1/topics/{topic}/events?{query}limit={limit}"),
                        None,
                    )
                    .await?;
                let events = page["events"].as_array().cloned().unwrap_or_default();
                Ok((events, page["next_seq"].as_u64()))
            }
            Target::Store(bus) => {
                let events = bus.replay(topic, from, limit).await?;
                let next = (events.len() == limit)
                    .then(|| events.last().and_then(|e| e.seq()))
                    .flatten()
                    .map(|s| s + 1);
                let events = events
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::internal(e.to_string()))?;
                Ok((events, next))
            }
        }
    }

    /// Topics as the server lists them (`topic`, `last_seq`, `rate`,
    /// `partitions`; no rate from a store).
    pub async fn topics(&self) -> Result<Vec<Value>> {
        match self {
            Target::Server { .. } => {
                let v: Value = self
                    .request(reqwest::Method::GET, "/v1/topics", None)
                    .await?;
                Ok(v["topics"].as_array().cloned().unwrap_or_default())
            }
            Target::Store(bus) => Ok(bus
                .topics()
                .await?
                .into_iter()
                .map(|t| {
                    json!({"topic": t.topic.as_str(), "last_seq": t.last_seq, "partitions": t.partitions})
                })
                .collect()),
        }
    }

    /// Groups as the server lists them.
    pub async fn groups(&self) -> Result<Vec<Value>> {
        match self {
            Target::Server { .. } => {
                let v: Value = self
                    .request(reqwest::Method::GET, "/v1/groups", None)
                    .await?;
                Ok(v["groups"].as_array().cloned().unwrap_or_default())
            }
            Target::Store(bus) => Ok(bus
                .groups()
                .await?
                .into_iter()
                .map(|g| {
                    serde_json::to_value(herald_server::inspect::GroupView::from(g))
                        .unwrap_or_default()
                })
                .collect()),
        }
    }
}

/// A message from the HTTP API's JSON shape, for a store target: the same
/// fields, checked the same way (unknown ones refused).
pub fn to_message(topic: &str, m: Value) -> Result<herald::Message> {
    let m: herald_server::message::MessageIn = serde_json::from_value(m)
        .map_err(|e| Error::validation(format!("invalid message: {e}")))?;
    m.into_message(topic).map_err(|e| {
        let body = e.body();
        Error::new(e.code(), body.message)
    })
}

//! `herald serve`: herald over HTTP for any language, and for operators.
//!
//! Owns the gateway in front of a [`herald::Bus`]: the HTTP API (publish,
//! call, topics, replay, groups, dead letters, health, `/metrics`), the
//! WebSocket (`ws`), its OpenAPI document, API
//! tokens and limits, the listener (connection limit, TLS) and graceful
//! shutdown. Does not own any semantics of events: everything goes through
//! the bus, so the gateway behaves the same on every store.
//!
//! ```no_run
//! # async fn run() -> herald::Result<()> {
//! use herald_server::{Server, ServerConfig};
//! let bus = herald::Bus::memory();
//! let server = Server::new(bus, ServerConfig::default(), "memory")?;
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Modules: `config` (settings, `herald.toml`), `auth` (tokens and
//! permissions), `state` (shared state, the auth and rate-limit
//! middleware), `origin` (Host, Origin and content-type checks: what a
//! browser page may reach), `access` (request ids, the access log),
//! `extract` (strict request decoding), `message` (what
//! clients publish), `publish`, `inspect`, `dead_letters`, `health` (the routes),
//! `openapi`, `listener` (connection limits and timeouts), `error`, `admin`
//! (the page at `/`), `slo`, `cloudevents` (structured-mode CloudEvents in
//! and out).

pub mod access;
pub mod admin;
pub mod auth;
pub mod catalog;
pub mod cloudevents;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod extract;
pub mod health;
pub mod inspect;
pub mod listener;
pub mod message;
pub mod openapi;
pub mod origin;
pub mod publish;
pub mod schemas;
pub mod slo;
pub mod state;
pub mod ws;

use std::future::Future;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald::{Bus, ErrorCode, Result};
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use error::{ApiError, ErrorBody};
use state::AppState;

/// Where WebSocket clients connect.
pub const WS_PATH: &str = "/v1/ws";

/// The gateway: a bus, its settings, and the routes in front of it.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server in front of `bus`; `store_kind` names its store in health
    /// answers (`sqlite`, `postgres`, `nats`, `memory`).
    pub fn new(bus: Bus, config: ServerConfig, store_kind: &'static str) -> Result<Self> {
        Ok(Server {
            state: AppState::new(bus, config, store_kind)?,
        })
    }

    /// The routes, for tests or for mounting inside another axum app (which
    /// must serve with `ConnectInfo<listener::Peer>`).
    pub fn router(&self) -> Router {
        let limit = self.state.config.max_request_bytes;
        let api = Router::new()
            .route("/v1/topics", get(inspect::topics))
            .route(
                "/v1/topics/{topic}/events",
                post(publish::publish).get(inspect::replay),
            )
            .route("/v1/groups", get(inspect::groups))
            .route("/v1/commands/{topic}", post(publish::call))
            .route("/v1/dead-letters", get(dead_letters::list))
            .route("/v1/dead-letters/replay", post(dead_letters::replay))
            .route("/v1/dead-letters/purge", post(dead_letters::purge))
            .route(
                "/v1/dead-letters/{id}",
                get(dead_letters::show).delete(dead_letters::purge_one),
            )
            .route(
                "/v1/dead-letters/{id}/replay",
                post(dead_letters::replay_one),
            )
            .route("/v1/schemas", get(schemas::list).post(schemas::register))
            .route(
                "/v1/schemas/{subject}",
                get(schemas::show).delete(schemas::delete),
            )
            .route("/v1/schemas/{subject}/versions/{n}", get(schemas::version))
            .route("/v1/schemas/{subject}/check", post(schemas::check))
            .route("/v1/asyncapi.json", get(catalog::asyncapi))
            .route("/v1/slo", get(slo::status))
            .route("/metrics", get(health::metrics))
            .route(WS_PATH, get(ws::upgrade))
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                state::authorize,
            ));
        Router::new()
            .route("/", get(admin::page))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/openapi.json", get(|| async { Json(openapi::document()) }))
            .merge(api)
            .fallback(|| async {
                ApiError::new(ErrorCode::NotFound, "no such route; see /openapi.json")
            })
            .method_not_allowed_fallback(|| async {
                ApiError::validation("method not allowed on this route; see /openapi.json")
                    .with_status(StatusCode::METHOD_NOT_ALLOWED)
            })
            .layer(axum::extract::DefaultBodyLimit::max(limit))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                origin::guard,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                access::access,
            ))
            .with_state(self.state.clone())
    }

    /// Bind the configured address and serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = self.state.config.listen;
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            herald::Error::new(
                ErrorCode::Unavailable,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        self.serve_on(tcp, shutdown).await
    }

    /// Serve on `tcp` until `shutdown` completes: then readiness fails,
    /// no new connections are taken, requests in flight get up to
    /// `HERALD_SHUTDOWN_TIMEOUT` to finish, and the bus closes (flushing
    /// and committing what it holds).
    pub async fn serve_on(
        self,
        tcp: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let config = self.state.config.clone();
        let tls = match &config.tls {
            Some((cert, key)) => Some(listener::tls_acceptor(cert, key)?),
            None => None,
        };
        let limits = listener::Limits {
            max_connections: config.max_connections,
            max_per_client: config.max_connections_per_client,
        };
        let listener = listener::Listener::new(tcp, limits, tls)
            .map_err(|e| herald::Error::internal(format!("listener: {e}")))?;
        let local = listener.local_addr();
        if config.tokens.is_empty() {
            tracing::warn!(%local, "no API tokens configured: open to every local client, listening on loopback only");
        }
        tracing::info!(%local, tls = config.tls.is_some(), store = self.state.store_kind, "herald serving");
        self.state.slo.start(herald::slo::DEFAULT_INTERVAL)?;
        let sampler = tokio::spawn(self.state.rates.clone().run(self.state.bus.clone()));
        let pruner = {
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    state.prune_rate_limits();
                }
            })
        };
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            state.start_draining();
            let _ = drain_tx.send(true);
        });
        let timeouts = listener::Timeouts {
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
        };
        listener::serve(
            listener,
            self.router(),
            timeouts,
            drain_rx,
            config.shutdown_timeout,
        )
        .await;
        self.state.slo.stop().await;
        sampler.abort();
        pruner.abort();
        self.state.bus.close().await?;
        tracing::info!("herald stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serving_is_a_send_future() {
        fn send<T: Send>(_: &T) {}
        let server = Server::new(Bus::memory(), ServerConfig::default(), "memory").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let serving = server.serve_on(tcp, async {});
        send(&serving);
    }
}

//! What every request handler shares, and the per-request gatekeeping.
//!
//! Owns [`AppState`] (the bus, the server's config, the rate limiter, the
//! shutdown flag) and the [`authorize`] middleware: it resolves the caller
//! from `Authorization: Bearer` (or `?token=` where a browser cannot send
//! headers: the WebSocket and the admin page's live tail), answers
//! `UNAUTHORIZED` for a missing or unknown token, then charges the caller's
//! rate limit and answers `BACKPRESSURE` (429) over it. Handlers then check
//! the permission their route needs with [`Caller::require`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use herald::{Bus, ErrorCode};
use tokio::sync::watch;

use crate::auth::Caller;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::listener::Peer;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The bus the gateway fronts.
    pub bus: Bus,
    /// The server's settings.
    pub config: Arc<ServerConfig>,
    /// The store's kind (`sqlite`, `postgres`, …), for readiness and the admin page.
    pub store_kind: &'static str,
    /// Recent readings of the topics' last `seq`, for their rates.
    pub rates: crate::inspect::Rates,
    /// The bus's SLO monitor (the default objectives).
    pub slo: herald::slo::Monitor,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    draining: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// State for `bus` under `config`.
    pub fn new(bus: Bus, config: ServerConfig, store_kind: &'static str) -> herald::Result<Self> {
        let limiter = NonZeroU32::new(config.rate_limit)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_second(n))));
        Ok(AppState {
            slo: bus.slo_monitor()?,
            bus,
            config: Arc::new(config),
            store_kind,
            rates: Default::default(),
            limiter,
            draining: Arc::new(watch::Sender::new(false)),
        })
    }

    /// From now on readiness fails, so load balancers stop sending work,
    /// and WebSockets close.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Becomes `true` when shutdown begins.
    pub fn draining_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Charge one request to `caller`'s rate limit (its token, or `peer`'s
    /// address on an open server): `BACKPRESSURE` over the limit.
    pub fn charge(&self, caller: &Caller, peer: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = match caller {
            Caller::Open => peer.to_string(),
            c => c.name().to_owned(),
        };
        limiter.check_key(&key).map_err(|not_until| {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(
                ErrorCode::Backpressure,
                format!(
                    "rate limit of {} requests/s exceeded (HERALD_RATE_LIMIT)",
                    self.config.rate_limit
                ),
            )
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    /// Forget rate-limit keys idle long enough to be full again.
    pub fn prune_rate_limits(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

/// The token a request presents: `Authorization: Bearer …` (the scheme in
/// any case, RFC 9110 §11.1), else (only on the WebSocket, which browsers
/// open without headers) `token=` in the query string, percent-decoded as
/// `encodeURIComponent` encodes it. An `Authorization` of another scheme
/// presents nothing.
fn presented(headers: &HeaderMap, path: &str, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if path != crate::WS_PATH {
        return None;
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| {
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Resolve the caller and charge its rate limit; see the module.
pub async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let secret = presented(req.headers(), req.uri().path(), req.uri().query());
    let caller = match state.config.tokens.caller(secret.as_deref()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Some(name) = req.extensions().get::<crate::access::CallerName>() {
        name.set(caller.name());
    }
    if let Err(e) = state.charge(&caller, peer.ip()) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_any_case_of_bearer_and_percent_decoded() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "bearer s3cret".parse().unwrap());
        assert_eq!(presented(&h, "/v1/topics", None).as_deref(), Some("s3cret"));
        h.insert(AUTHORIZATION, "BEARER  s3cret ".parse().unwrap());
        assert_eq!(presented(&h, "/v1/topics", None).as_deref(), Some("s3cret"));
        h.insert(AUTHORIZATION, "Basic dTpw".parse().unwrap());
        assert_eq!(presented(&h, "/v1/topics", None), None);
        let none = HeaderMap::new();
        let q = Some("a=1&token=a%2Fb%2Bc%3D%40d%20e");
        assert_eq!(
            presented(&none, crate::WS_PATH, q).as_deref(),
            Some("a/b+c=@d e")
        );
        assert_eq!(
            presented(&none, "/v1/topics", q),
            None,
            "only the WebSocket"
        );
    }
}

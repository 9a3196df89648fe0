//! Who may reach the routes from a browser: the `Host`, `Origin` and
//! content-type checks, and the headers that keep pages from framing ours.
//!
//! Owns the [`guard`] middleware, which runs before routing and before
//! authentication (DESIGN.md §10):
//!
//! - **Host.** A request's `Host` names must be one the server answers to,
//!   so a DNS-rebinding page (`evil.example` resolving to 127.0.0.1) is
//!   refused: `HERALD_ALLOWED_HOSTS` when set; otherwise, on an open server
//!   (no tokens, loopback only), the loopback names (`localhost`,
//!   `127.0.0.1`, `::1`) and the listen address; with tokens, any name
//!   (the token protects it). The port is not compared. `/healthz` and
//!   `/readyz` are exempt, for probes that address a pod by IP.
//! - **Origin.** A request that carries `Origin` (every browser request
//!   that could change state, and every WebSocket upgrade) must come from
//!   the server's own origin or one in `HERALD_ALLOWED_ORIGINS`; `null` and
//!   other origins are `FORBIDDEN`. Clients that are not browsers send no
//!   `Origin` and are not affected.
//! - **Content type.** Every `POST`, `PUT`, `PATCH` and `DELETE` must say
//!   `application/json` (or a CloudEvents JSON type), bodies or not: a page
//!   can send a cross-origin form or a no-cors `fetch` only as
//!   `text/plain`, form or multipart, so it cannot make one of these.
//! - **Framing.** Every response carries `X-Frame-Options: DENY` and
//!   `X-Content-Type-Options: nosniff`; the admin page adds
//!   `frame-ancestors 'none'` to its CSP.
//!
//! Does not own authentication (`state::authorize`) or CORS: the server
//! answers no preflight, so browsers never let a foreign page read it.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HOST, ORIGIN, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// Content types a state-changing request may carry.
const JSON_TYPES: &[&str] = &[
    "application/json",
    crate::cloudevents::CONTENT_TYPE,
    crate::cloudevents::BATCH_CONTENT_TYPE,
];

/// A `HERALD_ALLOWED_ORIGINS` entry: `scheme://host[:port]`, http or https,
/// nothing after.
pub fn check_origin_setting(origin: &str) -> herald::Result<()> {
    let ok = match origin.split_once("://") {
        Some(("http" | "https", rest)) => {
            !rest.is_empty()
                && !rest.contains(['/', '?', '#', '@'])
                && rest.chars().all(|c| c.is_ascii_graphic())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(herald::config::invalid(
            "HERALD_ALLOWED_ORIGINS",
            origin,
            "origins as scheme://host[:port] (http or https), comma-separated",
        ))
    }
}

/// A `HERALD_ALLOWED_HOSTS` entry: a host name or IP address, no port.
pub fn check_host_setting(host: &str) -> herald::Result<()> {
    let ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if ok {
        Ok(())
    } else {
        Err(herald::config::invalid(
            "HERALD_ALLOWED_HOSTS",
            host,
            "host names or IP addresses without a port, comma-separated",
        ))
    }
}

/// The host name of a `Host` header value, lower case, without the port or
/// an IPv6 address's brackets.
fn host_name(host: &str) -> String {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.to_ascii_lowercase()
}

/// Whether the server answers to `host` (a `Host` header value).
fn host_allowed(state: &AppState, host: &str) -> bool {
    let config = &state.config;
    let name = host_name(host);
    if !config.allowed_hosts.is_empty() {
        return config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&name));
    }
    if !config.tokens.is_empty() {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == config.listen.ip(),
        Err(_) => name == "localhost",
    }
}

/// Whether a request with `Host: host` may come from `origin`.
fn origin_allowed(state: &AppState, origin: &str, host: &str) -> bool {
    let scheme = if state.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let own = format!("{scheme}://{host}");
    origin.eq_ignore_ascii_case(&own)
        || state
            .config
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
}

/// The checks of the module doc, then the route; the framing headers on
/// every answer.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = match check(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn check(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let path = req.uri().path();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let probe = path == "/healthz" || path == "/readyz";
    if !probe && !host_allowed(state, host) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this server does not answer to host {:?} (HERALD_ALLOWED_HOSTS)",
                host_name(host)
            ),
        ));
    }
    if let Some(origin) = req.headers().get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        if !origin_allowed(state, origin, host) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("requests from origin {origin:?} are not allowed (HERALD_ALLOWED_ORIGINS)"),
            ));
        }
    }
    let changes_state = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if changes_state {
        let essence = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if !essence.is_some_and(|e| JSON_TYPES.contains(&e.as_str())) {
            return Err(ApiError::validation(format!(
                "{} needs content-type: application/json, even without a body",
                req.method()
            ))
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_name("LocalHost:80"), "localhost");
        assert_eq!(host_name("[::1]:7070"), "::1");
        assert_eq!(host_name("evil.example"), "evil.example");
    }

    #[test]
    fn settings_are_checked() {
        check_origin_setting("https://ops.example.com").unwrap();
        check_origin_setting("http://127.0.0.1:8080").unwrap();
        for bad in [
            "ops.example.com",
            "ftp://x",
            "https://x/path",
            "https://",
            "*",
        ] {
            assert!(check_origin_setting(bad).is_err(), "{bad}");
        }
        check_host_setting("herald.internal").unwrap();
        check_host_setting("::1").unwrap();
        for bad in ["", "a b", "x:80", "évil"] {
            assert!(check_host_setting(bad).is_err(), "{bad}");
        }
    }
}

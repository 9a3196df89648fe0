//! The admin page at `/`: topics (with their schema and owner), contracts
//! (each subject's versions, and a line diff between any two), groups,
//! dead letters (replay, purge), SLO status and recent violations, and a
//! live tail of a chosen pattern.
//!
//! Owns serving the page. It is one self-contained HTML file compiled into
//! the binary (`assets/admin.html`: no front-end build, no other server)
//! that calls the same HTTP API and WebSocket every client uses, with the
//! API token the operator types in (kept in the tab's session storage).

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../assets/admin.html");

/// The page.
pub async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}

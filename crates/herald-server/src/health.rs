//! Liveness, readiness and the Prometheus endpoint.
//!
//! Owns `GET /healthz` (the process answers), `GET /readyz` (the store
//! answers and shutdown has not begun: load balancers stop sending work when
//! it fails) and `GET /metrics` (the bus's own metrics in the Prometheus
//! text format, `herald::prometheus`; needs `admin` when tokens are set).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use herald::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// The topic readiness probes (its last `seq`: a read on the store).
const PROBE_TOPIC: &str = "herald.readiness";

/// A health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
    /// The store's kind: `sqlite`, `postgres`, `nats`, `memory`.
    pub store: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        store: state.store_kind.into(),
    })
}

/// The store answers and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    if state.is_draining() {
        return Err(ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    state.bus.last_seq(PROBE_TOPIC).await.map_err(|e| {
        // The store's own words (hosts, users, paths) go to the log, not to
        // an unauthenticated probe.
        tracing::warn!(error = %e, "readiness: the store does not answer");
        ApiError::new(ErrorCode::Unavailable, "store not ready")
    })?;
    Ok(Json(Health {
        status: "ready".into(),
        store: state.store_kind.into(),
    }))
}

/// The bus's metrics, Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Admin, "metrics")?;
    state.bus.refresh_consumer_health();
    let text = herald::prometheus::encode(state.bus.metrics());
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, herald::prometheus::CONTENT_TYPE)],
        text,
    ))
}

//! SLO status over HTTP: each objective against its metric now, and the
//! most recent `perf.slo_violation` events.
//!
//! Owns `GET /v1/slo`. The server runs the bus's SLO monitor
//! (`Bus::slo_monitor`, the default objectives), so violations are
//! published on the bus like any event; this route reads the objectives'
//! current percentiles and the last violations from the topic.

use axum::extract::State;
use axum::{Extension, Json};
use herald::slo::VIOLATION_TOPIC;
use herald::StartPosition;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Caller, Permission};
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

/// Most recent violations returned.
pub const RECENT: u64 = 20;

/// One objective now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SloView {
    /// The metric watched.
    pub metric: String,
    /// The percentile (`p95`, `max`, …).
    pub percentile: String,
    /// The highest value that keeps the objective (seconds for timers).
    pub threshold: f64,
    /// The percentile now; absent without samples.
    pub actual: Option<f64>,
    /// Samples in the metric's buffer.
    pub samples: usize,
    /// Whether the objective holds now (true without samples).
    pub ok: bool,
}

/// Objectives and recent violations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SloStatus {
    /// Each objective.
    pub slos: Vec<SloView>,
    /// The last violation events' payloads, oldest first.
    pub violations: Vec<serde_json::Value>,
}

/// SLO status and recent violations.
#[utoipa::path(get, path = "/v1/slo", tag = "operations",
    responses((status = 200, body = SloStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SloStatus>> {
    caller.require(Permission::Admin, "slo")?;
    state.bus.refresh_consumer_health();
    let slos = state
        .slo
        .slos()
        .into_iter()
        .map(|slo| {
            let (actual, samples) = state.slo.reading(&slo);
            SloView {
                metric: slo.metric().to_owned(),
                percentile: slo.percentile().to_string(),
                threshold: slo.threshold(),
                samples,
                ok: actual.is_none_or(|a| a <= slo.threshold()),
                actual,
            }
        })
        .collect();
    let violations = match state.bus.last_seq(VIOLATION_TOPIC).await? {
        None => Vec::new(),
        Some(last) => {
            let from = last.saturating_sub(RECENT - 1).max(1);
            state
                .bus
                .replay(VIOLATION_TOPIC, StartPosition::Seq(from), RECENT as usize)
                .await?
                .iter()
                .filter_map(|e| e.decode().ok())
                .collect()
        }
    };
    Ok(Json(SloStatus { slos, violations }))
}

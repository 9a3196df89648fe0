//! Dead letters over HTTP: list with filters, inspect, replay, purge.
//!
//! Owns `/v1/dead-letters` and its JSON view [`DeadLetterView`]. Every
//! route needs the `admin` permission. Replay re-publishes through the bus
//! (`herald::DeadLetters::replay`: a new message naming the original, then
//! the original deleted), so the store's guarantees apply unchanged.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use herald::{Bus, DeadLetter, DeadLetters, Envelope, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathParam, QueryParams};
use crate::state::AppState;

/// Most dead letters one list returns.
pub const MAX_LIST: usize = 1_000;

/// Which dead letters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Topic pattern (`orders.*`, `>`).
    pub topic: Option<String>,
    /// The consumer group that gave up.
    pub group: Option<String>,
    /// Error code (`VALIDATION`, `TIMEOUT`, …).
    pub code: Option<String>,
    /// Failed at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Failed before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// At most this many, oldest first (default and maximum 1000).
    pub limit: Option<usize>,
}

impl Filter {
    fn select(self, bus: &Bus) -> ApiResult<DeadLetters> {
        let mut d = bus.dead_letters();
        if let Some(t) = &self.topic {
            herald::Pattern::new(t)?;
            d = d.topic(t);
        }
        if let Some(g) = self.group {
            d = d.group(g);
        }
        if let Some(c) = &self.code {
            d = d.code(c.parse::<ErrorCode>()?);
        }
        if let Some(t) = self.since {
            d = d.since(t);
        }
        if let Some(t) = self.until {
            d = d.until(t);
        }
        let limit = self.limit.unwrap_or(MAX_LIST);
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(ApiError::validation(format!(
                "limit={limit} is not allowed: expected 1..={MAX_LIST}"
            )));
        }
        Ok(d.limit(limit))
    }
}

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id, for inspect, replay and purge.
    pub id: u64,
    /// The original's topic.
    pub topic: String,
    /// The original's `seq`.
    pub seq: Option<u64>,
    /// The group that gave up, if any.
    pub group: Option<String>,
    /// Why.
    pub reason: String,
    /// The failure's code.
    pub code: String,
    /// Where it failed: `handler`, `expired`, `decode`, `forwarder`, `gateway`.
    pub source: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// First failure.
    pub first_failed_at: DateTime<Utc>,
    /// Last failure.
    pub failed_at: DateTime<Utc>,
    /// The original envelope.
    #[schema(value_type = crate::openapi::EnvelopeSchema)]
    pub envelope: Envelope,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            id: d.id,
            topic: d.envelope.topic().to_string(),
            seq: d.envelope.seq(),
            group: d.group,
            reason: d.reason,
            code: d.code.as_str().to_owned(),
            source: d.source.as_str().to_owned(),
            attempts: d.attempts,
            first_failed_at: d.first_failed_at,
            failed_at: d.failed_at,
            envelope: d.envelope,
        }
    }
}

/// A list of dead letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// The seqs replayed events got.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// One per replayed dead letter.
    pub seqs: Vec<u64>,
}

/// How many were purged.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    /// The count.
    pub purged: u64,
}

/// List dead letters.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters", params(Filter),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(filter): QueryParams<Filter>,
) -> ApiResult<Json<DeadLetterList>> {
    caller.require(Permission::Admin, "dead letters")?;
    let found = filter.select(&state.bus)?.await?;
    Ok(Json(DeadLetterList {
        dead_letters: found.into_iter().map(Into::into).collect(),
    }))
}

async fn one(state: &AppState, id: u64) -> ApiResult<DeadLetterView> {
    let mut found = state.bus.dead_letters().ids([id]).await?;
    found
        .pop()
        .map(Into::into)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no dead letter {id}")))
}

/// Inspect one dead letter.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = u64, Path)),
    responses((status = 200, body = DeadLetterView), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam<u64>,
) -> ApiResult<Json<DeadLetterView>> {
    caller.require(Permission::Admin, "dead letters")?;
    Ok(Json(one(&state, id).await?))
}

/// Replay one dead letter to its topic.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead letters",
    params(("id" = u64, Path)),
    responses((status = 200, body = Replayed), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn replay_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam<u64>,
) -> ApiResult<Json<Replayed>> {
    caller.require(Permission::Admin, "dead letters")?;
    one(&state, id).await?;
    let seqs = state.bus.dead_letters().ids([id]).replay().await?;
    Ok(Json(Replayed { seqs }))
}

/// Replay every dead letter the filter selects.
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead letters", params(Filter),
    responses((status = 200, body = Replayed), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(filter): QueryParams<Filter>,
) -> ApiResult<Json<Replayed>> {
    caller.require(Permission::Admin, "dead letters")?;
    let seqs = filter.select(&state.bus)?.replay().await?;
    Ok(Json(Replayed { seqs }))
}

/// Delete one dead letter.
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = u64, Path)),
    responses((status = 200, body = Purged), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn purge_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam<u64>,
) -> ApiResult<Json<Purged>> {
    caller.require(Permission::Admin, "dead letters")?;
    let purged = state.bus.dead_letters().ids([id]).purge().await?;
    if purged == 0 {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no dead letter {id}"),
        ));
    }
    Ok(Json(Purged { purged }))
}

/// Delete every dead letter the filter selects.
#[utoipa::path(post, path = "/v1/dead-letters/purge", tag = "dead letters", params(Filter),
    responses((status = 200, body = Purged), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn purge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(filter): QueryParams<Filter>,
) -> ApiResult<Json<Purged>> {
    caller.require(Permission::Admin, "dead letters")?;
    let purged = filter.select(&state.bus)?.purge().await?;
    Ok(Json(Purged { purged }))
}

//! HTTP publish and command calls.
//!
//! Owns `POST /v1/topics/{topic}/events` (one message, or a JSON list
//! appended atomically as one batch) and `POST /v1/commands/{topic}` (the
//! command handler's response envelope, or its error). Both check the
//! caller's permission for the topic, the batch size and each payload's
//! size before anything reaches the bus, so a refused request publishes
//! nothing.

use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use herald::{Envelope, ErrorCode, Kind};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, OneOrMany, PathParam, QueryParams};
use crate::message::{MessageIn, PublishResponse, Published};
use crate::state::AppState;

/// Refuse before publishing: a batch over `HERALD_MAX_BATCH` or a payload
/// over `HERALD_MAX_PAYLOAD_BYTES`. Both are 413 `BACKPRESSURE` and not
/// retryable, like the bus's own payload check and an oversize body: one
/// code for "too large", which the same request never gets past.
fn check_sizes(state: &AppState, messages: &[MessageIn]) -> ApiResult<()> {
    if messages.is_empty() {
        return Err(ApiError::validation("an empty batch publishes nothing"));
    }
    if messages.len() > state.config.max_batch {
        return Err(ApiError::new(
            ErrorCode::Backpressure,
            format!(
                "a batch of {} events is over the limit of {} (HERALD_MAX_BATCH)",
                messages.len(),
                state.config.max_batch
            ),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .not_retryable());
    }
    let limit = state.bus.config().limits().payload_bytes();
    if let Some((i, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.payload_len() > limit)
    {
        return Err(ApiError::new(
            ErrorCode::Backpressure,
            format!(
                "event {i}: payload of {} bytes is over the limit of {limit} (HERALD_MAX_PAYLOAD_BYTES)",
                m.payload_len()
            ),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .not_retryable());
    }
    Ok(())
}

/// Publish one event or a batch to a topic.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/events",
    tag = "events",
    params(("topic" = String, Path, description = "dot-separated lowercase topic, e.g. `orders.placed`")),
    request_body(content(
        (MessageIn = "application/json"),
        (Object = "application/cloudevents+json"),
        (Vec<Object> = "application/cloudevents-batch+json"),
    ), description = "one message, or a JSON list of them (one atomic batch); or structured-mode CloudEvents whose `type` is the topic"),
    responses(
        (status = 201, description = "appended", body = PublishResponse),
        (status = 400, description = "bad JSON, field or topic", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, description = "payload or batch too large", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(topic): PathParam<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<PublishResponse>)> {
    // The grant first: a caller without it gets FORBIDDEN without the
    // server reading, let alone decoding, its body.
    caller.require(Permission::Publish, &topic)?;
    let JsonBody(body) = JsonBody::<OneOrMany>::from_request(request, &state).await?;
    let messages = body.into_messages(&topic)?;
    let events = publish_messages(&state, &caller, &topic, messages).await?;
    Ok((StatusCode::CREATED, Json(PublishResponse { topic, events })))
}

/// Publish `messages` to `topic` as one batch for `caller` (HTTP and
/// WebSocket alike): permission, sizes and kinds first, then the bus.
pub async fn publish_messages(
    state: &AppState,
    caller: &Caller,
    topic: &str,
    messages: Vec<MessageIn>,
) -> ApiResult<Vec<Published>> {
    caller.require(Permission::Publish, topic)?;
    check_sizes(state, &messages)?;
    let batch = messages
        .into_iter()
        .map(|m| {
            if m.kind == Some(Kind::Command) || m.kind == Some(Kind::Response) {
                return Err(ApiError::validation(
                    "kind must be `event` or `intent` here; call commands at /v1/commands/{topic}",
                ));
            }
            m.into_message(topic)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let receipts = state.bus.publish_receipts(batch).await?;
    Ok(receipts
        .into_iter()
        .map(|r| Published {
            id: r.id,
            seq: r.seq,
        })
        .collect())
}

/// How long a call may wait.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CallParams {
    /// Milliseconds to wait for the response (default `HERALD_TIMEOUT_SECONDS`; 1–300000).
    pub timeout_ms: Option<u64>,
}

/// Call a command and wait for its response envelope.
#[utoipa::path(
    post,
    path = "/v1/commands/{topic}",
    tag = "commands",
    params(("topic" = String, Path, description = "the command's topic"), CallParams),
    request_body(content = MessageIn),
    responses(
        (status = 200, description = "the handler's response envelope", body = crate::openapi::EnvelopeSchema),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no handler for the command", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 504, description = "no response in time", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(topic): PathParam<String>,
    QueryParams(params): QueryParams<CallParams>,
    request: Request,
) -> ApiResult<Json<Envelope>> {
    caller.require(Permission::Call, &topic)?;
    let JsonBody(message) = JsonBody::<MessageIn>::from_request(request, &state).await?;
    let response = call_command(&state, &caller, &topic, message, params.timeout_ms).await?;
    Ok(Json(response))
}

/// Call command `topic` for `caller` (HTTP and WebSocket alike), waiting
/// `timeout_ms` (1–300000) or the bus's timeout.
pub async fn call_command(
    state: &AppState,
    caller: &Caller,
    topic: &str,
    message: MessageIn,
    timeout_ms: Option<u64>,
) -> ApiResult<Envelope> {
    caller.require(Permission::Call, topic)?;
    check_sizes(state, std::slice::from_ref(&message))?;
    let mut call = state.bus.call(message.into_message(topic)?);
    if let Some(ms) = timeout_ms {
        if !(1..=300_000).contains(&ms) {
            return Err(ApiError::validation(format!(
                "timeout_ms={ms} is not allowed: expected 1..=300000"
            )));
        }
        call = call.timeout(Duration::from_millis(ms));
    }
    Ok(call.await?)
}

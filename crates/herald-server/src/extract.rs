//! Request extractors that answer with herald's error bodies.
//!
//! Owns [`JsonBody`] (a JSON body decoded strictly: every way a body can be
//! wrong — too large, another content type, not UTF-8, not JSON, nested too
//! deeply, wrong types, unknown fields — becomes a `VALIDATION` error, or 413
//! `BACKPRESSURE` for size), [`QueryParams`] and [`PathParam`] (axum's, with
//! the same error bodies instead of plain-text rejections).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use herald::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::message::MessageIn;

/// One message or a JSON list of them (a batch, appended atomically), or
/// structured-mode CloudEvents (`application/cloudevents+json`, one; or
/// `application/cloudevents-batch+json`, a list).
#[derive(Debug)]
pub enum OneOrMany {
    /// `{…}`
    One(MessageIn),
    /// `[{…}, …]`
    Many(Vec<MessageIn>),
    /// CloudEvents, not yet checked against the topic.
    CloudEvents(Vec<serde_json::Value>),
}

impl OneOrMany {
    /// The messages for `topic`, in order.
    pub fn into_messages(self, topic: &str) -> Result<Vec<MessageIn>, ApiError> {
        match self {
            OneOrMany::One(m) => Ok(vec![m]),
            OneOrMany::Many(v) => Ok(v),
            OneOrMany::CloudEvents(v) => v
                .into_iter()
                .map(|ce| crate::cloudevents::to_message(topic, ce))
                .collect(),
        }
    }
}

/// What a body's content type says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    CloudEvent,
    CloudEventBatch,
}

/// A JSON body decoded strictly, with herald's error bodies for every way it
/// can be wrong. The body limit is the router's (`HERALD_MAX_REQUEST_BYTES`).
pub struct JsonBody<T>(pub T);

/// Decode `bytes` as `T`, as [`JsonBody`] does.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody<OneOrMany> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (kind, bytes) = body_bytes(req, state, true).await?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        Ok(JsonBody(match (kind, first) {
            (BodyKind::CloudEvent, _) => OneOrMany::CloudEvents(vec![decode(&bytes)?]),
            (BodyKind::CloudEventBatch, _) => OneOrMany::CloudEvents(decode(&bytes)?),
            (BodyKind::Json, Some(b'[')) => OneOrMany::Many(decode(&bytes)?),
            (BodyKind::Json, _) => OneOrMany::One(decode(&bytes)?),
        }))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody<MessageIn> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (_, bytes) = body_bytes(req, state, false).await?;
        Ok(JsonBody(decode(&bytes)?))
    }
}

/// A JSON body (`application/json`, or no content type) decoded as `T`,
/// with the errors [`JsonBody`] gives.
pub async fn json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T, ApiError> {
    let (_, bytes) = body_bytes(req, state, false).await?;
    decode(&bytes)
}

/// The body, with a JSON content type (or none; CloudEvents' too where
/// `cloudevents`): an oversize body is 413 `BACKPRESSURE`, another content
/// type 415 `VALIDATION`.
async fn body_bytes<S: Send + Sync>(
    req: Request,
    state: &S,
    cloudevents: bool,
) -> Result<(BodyKind, Bytes), ApiError> {
    let mut kind = BodyKind::Json;
    if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        kind = match essence.as_str() {
            "application/json" => BodyKind::Json,
            crate::cloudevents::CONTENT_TYPE if cloudevents => BodyKind::CloudEvent,
            crate::cloudevents::BATCH_CONTENT_TYPE if cloudevents => BodyKind::CloudEventBatch,
            _ => {
                return Err(ApiError::validation(format!(
                    "content type {ct:?} is not supported: send application/json{}",
                    if cloudevents {
                        " or application/cloudevents(-batch)+json"
                    } else {
                        ""
                    }
                ))
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE))
            }
        };
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::Backpressure,
                format!("request body too large: {}", e.body_text()),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .not_retryable()
        } else {
            ApiError::validation(format!("unreadable request body: {}", e.body_text()))
        }
    })?;
    Ok((kind, bytes))
}

/// Query parameters decoded strictly (`VALIDATION` on an unknown or bad one).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::validation(format!("bad query: {}", e.body_text())))
    }
}

/// Path parameters, with a `VALIDATION` error when one does not parse.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathParam(v))
            .map_err(|e| ApiError::validation(format!("bad path: {}", e.body_text())))
    }
}

//! Contracts over HTTP: the store's schema subjects (DESIGN.md §11).
//!
//! Owns `GET /v1/schemas` (the subjects a caller may see),
//! `POST /v1/schemas` (register a version), `GET /v1/schemas/{subject}`,
//! `GET /v1/schemas/{subject}/versions/{n}`, `POST
//! /v1/schemas/{subject}/check` (a compatibility dry run) and `DELETE
//! /v1/schemas/{subject}`. Registering, checking and deleting need the
//! `schemas` grant covering the subject; reading a subject needs any of
//! `schemas`, `publish` or `subscribe` covering it (or `admin`). What may
//! be registered is `herald::contract`'s; the routes add only grants and
//! bounds (a request body is bounded by `HERALD_MAX_REQUEST_BYTES`, a
//! schema by `herald::contract::MAX_SCHEMA_BYTES`).

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use herald::contract::{BreakingChange, Compatibility, SchemaVersion, Subject};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;

/// A subject as the routes show it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectView {
    /// The topic pattern it covers.
    pub subject: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// `backward` (default), `forward`, `full`, their `_transitive` forms, or `none`.
    pub compatibility: String,
    /// Its versions, oldest first.
    pub versions: Vec<VersionView>,
}

/// One version of a subject's schema.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub version: u32,
    /// The JSON Schema.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    pub registered_at: chrono::DateTime<chrono::Utc>,
}

impl From<SchemaVersion> for VersionView {
    fn from(v: SchemaVersion) -> Self {
        VersionView {
            version: v.version,
            schema: v.schema,
            registered_at: v.registered_at,
        }
    }
}

impl From<Subject> for SubjectView {
    fn from(s: Subject) -> Self {
        SubjectView {
            subject: s.pattern.to_string(),
            owner: s.owner,
            description: s.description,
            compatibility: s.compatibility.to_string(),
            versions: s.versions.into_iter().map(VersionView::from).collect(),
        }
    }
}

/// The subjects a caller may see.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectList {
    pub subjects: Vec<SubjectView>,
}

/// A schema to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterIn {
    /// The topic pattern (subject).
    pub subject: String,
    /// The JSON Schema.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// The subject's mode from now on (this registration is checked by it).
    pub compatibility: Option<String>,
}

/// What a registration gave.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub subject: String,
    pub version: u32,
}

/// A schema to check against a subject, by its mode or another.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    pub compatibility: Option<String>,
}

/// One breaking change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BreakingView {
    /// The earlier version it breaks.
    pub version: u32,
    pub path: String,
    pub change: String,
}

/// A dry run's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checked {
    pub compatible: bool,
    pub breaking: Vec<BreakingView>,
}

impl From<BreakingChange> for BreakingView {
    fn from(b: BreakingChange) -> Self {
        BreakingView {
            version: b.version,
            path: b.path,
            change: b.change,
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody<RegisterIn> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        crate::extract::json(req, state).await.map(JsonBody)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody<CheckIn> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        crate::extract::json(req, state).await.map(JsonBody)
    }
}

fn mode(text: Option<&str>) -> Result<Option<Compatibility>, ApiError> {
    Ok(text.map(str::parse).transpose()?)
}

/// Whether `caller` may read subject `subject`.
pub(crate) fn may_read(caller: &Caller, subject: &str) -> bool {
    [
        Permission::Schemas,
        Permission::Publish,
        Permission::Subscribe,
        Permission::Admin,
    ]
    .into_iter()
    .any(|p| caller.require(p, subject).is_ok())
}

/// A subject (a topic pattern) checked first: `VALIDATION`, not
/// `FORBIDDEN`, for one that is not a pattern.
fn subject_of(text: &str) -> Result<(), ApiError> {
    herald::Pattern::new(text).map(drop).map_err(ApiError::from)
}

fn readable(caller: &Caller, subject: &str) -> Result<(), ApiError> {
    subject_of(subject)?;
    if may_read(caller, subject) {
        return Ok(());
    }
    caller.require(Permission::Schemas, subject)
}

/// List the schema subjects the caller may read.
#[utoipa::path(get, path = "/v1/schemas", tag = "schemas",
    responses((status = 200, body = SubjectList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SubjectList>> {
    let subjects = state
        .bus
        .schemas()
        .list()
        .await?
        .into_iter()
        .filter(|s| may_read(&caller, s.pattern.as_str()))
        .map(SubjectView::from)
        .collect();
    Ok(Json(SubjectList { subjects }))
}

/// Register a schema version under a subject: its next version, or the
/// latest again for the same schema; a breaking one is refused naming each
/// breaking change.
#[utoipa::path(post, path = "/v1/schemas", tag = "schemas", request_body = RegisterIn,
    responses((status = 201, body = Registered), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("token" = [])))]
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<RegisterIn>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    subject_of(&body.subject)?;
    caller.require(Permission::Schemas, &body.subject)?;
    let mut register = state.bus.schemas().register(&body.subject, body.schema);
    if let Some(owner) = body.owner {
        register = register.owner(owner);
    }
    if let Some(description) = body.description {
        register = register.description(description);
    }
    if let Some(mode) = mode(body.compatibility.as_deref())? {
        register = register.compatibility(mode);
    }
    let version = register.await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            subject: body.subject,
            version: version.version,
        }),
    ))
}

/// One subject with its versions.
#[utoipa::path(get, path = "/v1/schemas/{subject}", tag = "schemas",
    params(("subject" = String, Path)),
    responses((status = 200, body = SubjectView), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(subject): PathParam<String>,
) -> ApiResult<Json<SubjectView>> {
    readable(&caller, &subject)?;
    Ok(Json(state.bus.schemas().get(&subject).await?.into()))
}

/// One version of a subject.
#[utoipa::path(get, path = "/v1/schemas/{subject}/versions/{n}", tag = "schemas",
    params(("subject" = String, Path), ("n" = u32, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam((subject, n)): PathParam<(String, u32)>,
) -> ApiResult<Json<VersionView>> {
    readable(&caller, &subject)?;
    Ok(Json(state.bus.schemas().version(&subject, n).await?.into()))
}

/// What registering a schema under a subject would break (nothing is
/// stored).
#[utoipa::path(post, path = "/v1/schemas/{subject}/check", tag = "schemas",
    params(("subject" = String, Path)), request_body = CheckIn,
    responses((status = 200, body = Checked), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn check(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(subject): PathParam<String>,
    request: Request,
) -> ApiResult<Json<Checked>> {
    // The grant first: a caller without it gets FORBIDDEN without the
    // server reading its body.
    subject_of(&subject)?;
    caller.require(Permission::Schemas, &subject)?;
    let JsonBody(body) = JsonBody::<CheckIn>::from_request(request, &state).await?;
    let mode = mode(body.compatibility.as_deref())?;
    let breaking = state
        .bus
        .schemas()
        .check(&subject, &body.schema, mode)
        .await?;
    Ok(Json(Checked {
        compatible: breaking.is_empty(),
        breaking: breaking.into_iter().map(BreakingView::from).collect(),
    }))
}

/// Delete a subject and its versions: its topics are checked no more.
#[utoipa::path(delete, path = "/v1/schemas/{subject}", tag = "schemas",
    params(("subject" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(subject): PathParam<String>,
) -> ApiResult<StatusCode> {
    subject_of(&subject)?;
    caller.require(Permission::Schemas, &subject)?;
    state.bus.schemas().delete(&subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! The gateway's error body and the HTTP status of each error code.
//!
//! Owns [`ApiError`]: every failure a client sees — a herald error from the
//! bus, a request the gateway refuses, an unknown route — becomes one JSON
//! body `{"code": "...", "message": "..."}` whose `code` is one of DESIGN.md
//! §5's stable codes, with the status [`status_of`] maps it to. Does not own
//! the codes themselves (`herald::ErrorCode`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One of `VALIDATION`, `BACKPRESSURE`, `NOT_FOUND`, `TIMEOUT`,
    /// `UNAVAILABLE`, `DUPLICATE`, `UNAUTHORIZED`, `FORBIDDEN`, `INTERNAL`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Whether the same request may succeed if tried again.
    pub retryable: bool,
    /// The request's id (its `X-Request-Id`), for the server's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The longest message an error carries: a bad value is quoted, never
/// echoed whole.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `message`, cut at [`MAX_MESSAGE_BYTES`] on a character boundary.
fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let total = message.len();
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(&format!("… ({total} bytes in all)"));
    }
    message
}

/// An error on its way to the client: a code, a message and the HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retryable: bool,
    retry_after: Option<u64>,
}

/// The status a code gets when nothing more specific applies: `VALIDATION`
/// 400, `UNAUTHORIZED` 401, `FORBIDDEN` 403, `NOT_FOUND` 404, `DUPLICATE`
/// 409, `BACKPRESSURE` 429, `INTERNAL` 500, `UNAVAILABLE` 503, `TIMEOUT` 504.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Validation => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Duplicate => StatusCode::CONFLICT,
        ErrorCode::Backpressure => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// An error with `code`'s usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: status_of(code),
            code,
            message: clip(message.into()),
            retryable: matches!(
                code,
                ErrorCode::Backpressure | ErrorCode::Timeout | ErrorCode::Unavailable
            ),
            retry_after: None,
        }
    }

    /// The same error with another status (413 for an oversize body, say).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same error, marked as one the same request will never get past
    /// (a payload over the limit, say), whatever its code.
    pub fn not_retryable(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// The same error, telling the client to wait `seconds` before trying
    /// again (`Retry-After`).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Whether the same request may succeed if tried again.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// A `VALIDATION` error.
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Validation, message)
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The body this error is sent as.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_owned(),
            message: self.message.clone(),
            retryable: self.retryable,
            request_id: crate::access::current_request_id(),
        }
    }
}

impl From<Error> for ApiError {
    /// The error as a client sees it; an `INTERNAL` one's own words (a
    /// driver's message may name hosts, users or tables) go to the log, and
    /// the client gets the request id to find them by.
    fn from(e: Error) -> Self {
        let message = if e.code() == ErrorCode::Internal {
            tracing::error!(error = %e, request_id = ?crate::access::current_request_id(), "internal error");
            "internal error; the server's log has the details under this request id".to_owned()
        } else {
            e.message().to_owned()
        };
        let mut api = ApiError::new(e.code(), message);
        api.retryable = e.retryable();
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// What handlers return.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_meaningful_status() {
        let codes = [
            ErrorCode::Validation,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Duplicate,
            ErrorCode::Backpressure,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ];
        let statuses: std::collections::BTreeSet<u16> =
            codes.iter().map(|c| status_of(*c).as_u16()).collect();
        assert_eq!(statuses.len(), codes.len());
        assert_eq!(status_of(ErrorCode::Unauthorized), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(ErrorCode::Forbidden), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_herald_error_keeps_its_code_and_retryable_verdict() {
        let e: ApiError = Error::new(ErrorCode::Unavailable, "store down").into();
        let body = e.body();
        assert_eq!(body.code, "UNAVAILABLE");
        assert!(body.retryable);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn internal_errors_keep_their_details_to_the_log() {
        let e: ApiError = Error::internal("connection to db.internal:5432 as admin failed").into();
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(
            !e.body().message.contains("db.internal"),
            "{}",
            e.body().message
        );
    }

    #[test]
    fn long_messages_are_clipped_on_a_character_boundary() {
        let e = ApiError::validation(format!("bad key {:?}", "é".repeat(50_000)));
        let m = e.body().message;
        assert!(m.len() < MAX_MESSAGE_BYTES + 64, "{}", m.len());
        assert!(m.ends_with("bytes in all)"), "{m}");
    }
}

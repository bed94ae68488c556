//! The one error type of the HTTP layer and its one mapping to responses.
//! A client sees a stable code, a message written for people and the
//! request id; the cause goes to the server log under the same id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use strongroom_core::DomainError;
use strongroom_proto::{ErrorBody, ErrorCode};
use strongroom_store::StoreError;

tokio::task_local! {
    /// The id of the request being served, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".to_owned())
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Shown to the client.
    pub message: String,
    /// Logged only.
    cause: Option<String>,
    retry_after: Option<u32>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            cause: None,
            retry_after: None,
        }
    }

    /// A server-side failure: the client gets a generic message, the log
    /// gets the cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message:
                "the server could not complete the request; quote the request id when reporting it"
                    .into(),
            cause: Some(cause.to_string()),
            retry_after: None,
        }
    }

    pub fn busy(message: impl Into<String>, retry_after: u32) -> Self {
        ApiError {
            code: ErrorCode::Busy,
            message: message.into(),
            cause: None,
            retry_after: Some(retry_after),
        }
    }

    /// A refusal that tells the client when to come back.
    pub fn limited(code: ErrorCode, message: impl Into<String>, retry_after: u32) -> Self {
        ApiError {
            code,
            message: message.into(),
            cause: None,
            retry_after: Some(retry_after),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthenticated, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            StoreError::VersionConflict { .. } => {
                ApiError::new(ErrorCode::VersionConflict, e.to_string())
            }
            StoreError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            StoreError::Db(sqlx::Error::PoolTimedOut) => {
                ApiError::busy("the database is busy; retry shortly", 1)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<strongroom_crypto::CryptoError> for ApiError {
    fn from(e: strongroom_crypto::CryptoError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(%request_id, code = %self.code, cause = self.cause.as_deref().unwrap_or(""), "request failed");
        } else {
            tracing::debug!(%request_id, code = %self.code, message = %self.message, "request refused");
        }
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            request_id,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(e: ApiError) -> (u16, serde_json::Value) {
        let resp = REQUEST_ID
            .scope("req-1".into(), async move { e.into_response() })
            .await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let (status, body) = body_of(ApiError::internal(
            "SELECT * FROM users: disk I/O error at /var/lib/x",
        ))
        .await;
        assert_eq!(status, 500);
        assert_eq!(body["code"], "internal");
        assert_eq!(body["request_id"], "req-1");
        let text = body.to_string();
        assert!(
            !text.contains("SELECT") && !text.contains("/var/lib"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn store_errors_map_to_stable_codes() {
        let (s, b) =
            body_of(StoreError::Conflict("user ID x is already taken".into()).into()).await;
        assert_eq!((s, b["code"].as_str()), (409, Some("conflict")));
        let (s, b) = body_of(StoreError::Corrupt("bad json at row 7".into()).into()).await;
        assert_eq!((s, b["code"].as_str()), (500, Some("internal")));
        assert!(!b.to_string().contains("row 7"));
        let (s, b) = body_of(DomainError::UnknownField("no field 'x'".into()).into()).await;
        assert_eq!((s, b["code"].as_str()), (400, Some("unknown_field")));
    }
}

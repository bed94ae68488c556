//! Error codes: stable, machine-readable, documented in the OpenAPI document.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes. Clients match on these, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad query string, bad path parameter).
    BadRequest,
    /// The body is not valid JSON, or does not match the expected shape.
    InvalidJson,
    /// The body has a field the endpoint does not know.
    UnknownField,
    /// A value failed validation; the message names the field.
    ValidationFailed,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// Company, user or password is wrong, or the account may not sign in.
    SignInFailed,
    /// No valid session: sign in again.
    Unauthenticated,
    /// Signed in, but not allowed to do this.
    Forbidden,
    /// The session may only enrol a second factor until one is set up.
    SecondFactorEnrolmentRequired,
    /// The session may only change the password until it is changed.
    PasswordChangeRequired,
    /// The thing does not exist (or is not visible to the caller).
    NotFound,
    /// The path exists but not with this HTTP method.
    MethodNotAllowed,
    /// The thing already exists, or the change conflicts with the current state.
    Conflict,
    /// The record changed since the caller read it: read it again.
    VersionConflict,
    /// Too many requests from this address or company; retry after the
    /// time in `Retry-After`.
    RateLimited,
    /// The server is busy; retry after the time in `Retry-After`.
    Busy,
    /// A stored value failed its integrity check (changed or moved in the
    /// database); it is not returned. The operator is told.
    IntegrityError,
    /// Something went wrong on the server; quote the request id.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::SignInFailed => "sign_in_failed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::SecondFactorEnrolmentRequired => "second_factor_enrolment_required",
            ErrorCode::PasswordChangeRequired => "password_change_required",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Busy => "busy",
            ErrorCode::IntegrityError => "integrity_error",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidJson
            | ErrorCode::UnknownField
            | ErrorCode::ValidationFailed => 400,
            ErrorCode::SignInFailed | ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden
            | ErrorCode::SecondFactorEnrolmentRequired
            | ErrorCode::PasswordChangeRequired => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::VersionConflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Busy => 503,
            ErrorCode::Internal | ErrorCode::IntegrityError => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person. Never internal detail.
    pub message: String,
    /// Quote this when reporting a problem; the server log has the cause under it.
    pub request_id: String,
}

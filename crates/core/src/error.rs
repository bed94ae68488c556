//! Domain errors: what a rule refused and why, in words a user can act on.

use strongroom_proto::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A value is not acceptable; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
    /// A field name the record type does not have.
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    VersionConflict(String),
    #[error("{0}")]
    Forbidden(String),
}

impl DomainError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DomainError::Invalid(_) => ErrorCode::ValidationFailed,
            DomainError::UnknownField(_) => ErrorCode::UnknownField,
            DomainError::NotFound(_) => ErrorCode::NotFound,
            DomainError::Conflict(_) => ErrorCode::Conflict,
            DomainError::VersionConflict(_) => ErrorCode::VersionConflict,
            DomainError::Forbidden(_) => ErrorCode::Forbidden,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        DomainError::Invalid(msg.into())
    }
}

pub type DomainResult<T> = Result<T, DomainError>;

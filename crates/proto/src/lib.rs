//! Wire types shared by the server, the typed client, the CLI and the tests.
//!
//! Every request type refuses unknown fields, so a misspelt key is a clear
//! 400 instead of a silently ignored value.

pub mod access;
pub mod error;
pub mod records;
pub mod schema;
pub mod security;

pub use access::*;
pub use error::{ErrorBody, ErrorCode};
pub use records::*;
pub use schema::*;
pub use security::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the server answers and its store is reachable.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// `POST /api/v1/auth/login`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Company code, e.g. `ACME`.
    pub company: String,
    /// User ID within the company.
    pub user: String,
    /// The user's password.
    pub password: String,
}

// Hand-written so a password never reaches a log through `{:?}`.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("company", &self.company)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A new session. The token is shown once; the server keeps only its hash.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token. Also set as the `__Host-strongroom_session` cookie.
    pub token: String,
    /// When the session ends regardless of activity.
    pub expires_at: DateTime<Utc>,
    /// When the session ends if it is not used before then.
    pub idle_expires_at: DateTime<Utc>,
    pub user: UserView,
    /// Set when the session may do only one thing first:
    /// `enrol_second_factor` or `change_password`.
    pub restriction: Option<String>,
    /// When the password expires, if it does within the warning period.
    pub password_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish()
    }
}

/// `GET /api/v1/auth/session`: who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub company: String,
    pub user: UserView,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    /// `enrol_second_factor` or `change_password` while the session is
    /// limited to that.
    pub restriction: Option<String>,
}

/// A company (tenant).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompanyView {
    pub code: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(UserStatus::Active),
            "disabled" => Some(UserStatus::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// User ID, unique within the company (stored lower-case).
    pub user_id: String,
    pub display_name: String,
    pub email: Option<String>,
    /// Department code, if the user belongs to one.
    pub department: Option<String>,
    pub status: UserStatus,
    /// The company's master account: cannot be deleted, disabled or demoted.
    pub is_master: bool,
    /// Holds every administrative power (users, security, audit, keys).
    pub is_admin: bool,
    /// Security level: the most classified information the user may see.
    pub clearance: Classification,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub user_id: String,
    pub display_name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    /// Initial password (12 to 256 characters).
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
    /// Security level (default `internal`); not above the creator's own.
    #[serde(default = "internal")]
    pub clearance: Classification,
    /// Personal roles (default none: a new user sees no records until a
    /// role is granted, personally or through the department).
    #[serde(default)]
    pub roles: Vec<String>,
}

fn internal() -> Classification {
    Classification::Internal
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("user_id", &self.user_id)
            .field("department", &self.department)
            .field("is_admin", &self.is_admin)
            .finish_non_exhaustive()
    }
}

/// Fields left out are unchanged. `department: null` removes the department.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub department: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UserStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_admin: Option<bool>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
    /// The user must choose a new password at next sign-in (default: yes,
    /// as for any password someone else knows).
    #[serde(default = "yes")]
    pub must_change: bool,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for SetPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetPassword { password: <redacted> }")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DepartmentView {
    pub code: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDepartment {
    /// Short code, e.g. `SALES` (letters, digits, `_`, `-`; stored upper-case).
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDepartment {
    pub name: String,
}

/// A list page. `next_cursor` is absent on the last page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Serde helper telling "absent" from "null" for patch fields.
pub mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

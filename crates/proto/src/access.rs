//! Access control: roles, security levels, the pledge and training.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Classification;

/// Actions on records of a type over a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantView {
    /// A record type key, or `*` for every type.
    pub record_type: String,
    /// `view`, `create`, `edit`, `delete`, `export`, `reveal`.
    pub actions: Vec<String>,
    /// `own` (records the user owns), `department` (the user's current
    /// department's), `company` (all).
    pub scope: String,
}

/// A role: record grants and administrative powers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub grants: Vec<GrantView>,
    /// `users`, `security`, `audit`, `keys`.
    pub powers: Vec<String>,
    /// Built-in roles cannot be changed or deleted.
    pub built_in: bool,
}

/// `PUT /api/v1/roles/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRole {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub grants: Vec<GrantView>,
    #[serde(default)]
    pub powers: Vec<String>,
}

/// A user's security level and personal roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserAccess {
    pub clearance: Classification,
    pub roles: Vec<String>,
}

/// The roles a department gives its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartmentRoles {
    pub roles: Vec<String>,
}

/// What the caller may do now, and why not more.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EffectiveAccess {
    pub clearance: Classification,
    /// The level in force now (lower than `clearance` while training has lapsed).
    pub effective_clearance: Classification,
    pub own_roles: Vec<String>,
    pub department_roles: Vec<String>,
    pub grants: Vec<GrantView>,
    pub powers: Vec<String>,
    pub pledge_version: Option<i64>,
    pub pledge_accepted: bool,
    pub training_completed_at: Option<DateTime<Utc>>,
    pub training_due: bool,
}

/// The company's security pledge.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PledgeView {
    pub version: i64,
    pub text: String,
    pub published_at: DateTime<Utc>,
    pub published_by: String,
    /// Whether the caller accepted this version.
    pub accepted: bool,
}

/// `POST /api/v1/pledge`: publish a new version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishPledge {
    pub text: String,
}

/// `POST /api/v1/pledge/accept`: the version being accepted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptPledge {
    pub version: i64,
}

/// Whether training gates access, and how long a training lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingPolicyView {
    pub required: bool,
    /// 1 to 3650 (default 365).
    pub interval_days: u32,
}

/// `PUT /api/v1/users/{user_id}/training`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    pub completed_on: NaiveDate,
}

/// A user whose training is due.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrainingDue {
    pub user_id: String,
    pub completed_at: Option<DateTime<Utc>>,
}

/// `PUT /api/v1/record-types/{type}/classification`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetClassification {
    /// The type's own level (who may see its records at all).
    pub classification: Option<Classification>,
    /// Field key → level.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, Classification>,
}

//! Intrusion detection: incidents, detector rules, address blocks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentView {
    pub id: i64,
    pub opened_at: DateTime<Utc>,
    /// `brute_force`, `password_spraying`, `new_address`, `off_hours`, `mass_read`, `probing`.
    pub detector: String,
    /// `user:<id>` or `ip:<address>`.
    pub subject: String,
    pub summary: String,
    /// What was done: `alert`, `block_address`, `lock_account`, `end_sessions`.
    pub response: String,
    /// `open`, `acknowledged` or `resolved`.
    pub status: String,
    #[schema(value_type = Vec<Object>)]
    pub notes: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIncident {
    /// `open`, `acknowledged` or `resolved`.
    pub status: String,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectorRuleView {
    pub detector: String,
    pub enabled: bool,
    /// Events (distinct accounts for spraying; prior sign-ins for off_hours)
    /// that make it fire.
    pub threshold: u32,
    pub window_seconds: i64,
    /// `alert`, `block_address`, `lock_account` or `end_sessions`.
    pub response: String,
    /// How long a block or lock lasts.
    pub block_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddressBlockView {
    pub address: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// One entry of an IP allow or block list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRuleView {
    /// `allow` or `block`.
    pub kind: String,
    /// An address (`192.0.2.7`, `2001:db8::1`) or a CIDR range (`10.0.0.0/8`).
    pub network: String,
    #[serde(default)]
    pub label: String,
}

/// Replaces an IP list. Refused with `conflict` if it would shut out the
/// administrator saving it, unless `force` is set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetIpRules {
    pub rules: Vec<IpRuleView>,
    #[serde(default)]
    pub force: bool,
}

/// One weekly window: `day` is mon..sun, `start`/`end` are `HH:MM` in the
/// company's time zone; an `end` at or before `start` runs overnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessWindowView {
    pub day: String,
    pub start: String,
    pub end: String,
}

/// The company's access hours: its IANA time zone and default windows (no
/// windows: any time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyAccessHours {
    pub timezone: String,
    pub windows: Vec<AccessWindowView>,
    /// Save even if it ends the saving administrator's own access now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A user's own windows (replacing the company's when non-empty) and the
/// account's validity dates (`YYYY-MM-DD`, in the company's time zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserAccessHours {
    pub windows: Vec<AccessWindowView>,
    #[serde(default)]
    pub valid_from: Option<chrono::NaiveDate>,
    #[serde(default)]
    pub valid_until: Option<chrono::NaiveDate>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A session, as its user or an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// A reference to the session (not its token).
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session this request came with.
    pub current: bool,
}

/// How many sessions one user may hold at once, and what a new sign-in
/// does when that many are open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicyView {
    /// 0: no limit.
    pub max_sessions_per_user: u32,
    /// `refuse_new` or `end_oldest`.
    pub when_full: String,
}

/// A company's password rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRulesView {
    /// 12 to 128.
    pub min_length: u32,
    /// zxcvbn strength 0 to 4 (0: not checked).
    pub min_score: u8,
    /// How many of lower case, upper case, digits, other characters must appear (0 to 4).
    pub require_classes: u8,
    /// How many earlier passwords may not be reused (0 to 24).
    pub history: u8,
}

/// `POST /api/v1/auth/password`: change your own password.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

impl std::fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangePassword { .. }")
    }
}

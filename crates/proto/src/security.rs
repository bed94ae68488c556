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
    /// The company's idle timeout, 10 to 1440 minutes (default 30); a
    /// user's own setting overrides it. Applies to sessions started after
    /// the change.
    #[serde(default = "default_idle")]
    pub idle_timeout_minutes: u32,
}

fn default_idle() -> u32 {
    30
}

fn default_warn() -> u16 {
    14
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
    /// Days after which a password must be changed at sign-in (0: never, the default).
    #[serde(default)]
    pub max_age_days: u16,
    /// Days before expiry that sign-in starts warning (0 to 90, default 14).
    #[serde(default = "default_warn")]
    pub warn_days: u16,
    /// Days a password must be kept before its owner changes it again (0 to 30).
    #[serde(default)]
    pub min_age_days: u16,
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

/// Lockout, per-address throttling and who needs a second factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInPolicyView {
    /// Failed sign-ins (wrong password or second factor) within the window that lock the account (1 to 100, default 5).
    pub lockout_threshold: u32,
    /// The counting window in minutes (1 to 1440, default 15).
    pub window_minutes: u32,
    /// The first lock's length in minutes; each further lockout doubles it (default 15).
    pub lockout_minutes: u32,
    /// The longest a lock lasts, in minutes (default 1440).
    pub lockout_max_minutes: u32,
    /// Locks last until an administrator unlocks the account.
    pub lockout_until_unlocked: bool,
    /// Failed sign-ins from one address, any accounts, within the window that block the address (default 20).
    pub address_threshold: u32,
    /// How long such an address is blocked, in minutes (default 15).
    pub address_block_minutes: u32,
    /// Who must use a second factor: `off`, `admins`, `all` or `selected`
    /// (users marked by an administrator). The master account always must
    /// once the company has other users.
    pub two_factor: String,
}

/// `202` from sign-in: the password was right; finish with a second factor
/// at `POST /api/v1/auth/login/second-factor` before `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecondFactorChallenge {
    pub challenge: String,
    /// `totp`, `recovery_code`, `passkey`: what this user can answer with.
    pub methods: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// For `passkey`: the WebAuthn request options to pass to
    /// `navigator.credentials.get()`.
    #[schema(value_type = Option<Object>)]
    pub passkey_options: Option<serde_json::Value>,
}

/// The second sign-in step: one of `code`, `recovery_code` or `passkey`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorAnswer {
    pub challenge: String,
    /// A 6-digit code from the authenticator app.
    pub code: Option<String>,
    /// One of the recovery codes shown at enrolment.
    pub recovery_code: Option<String>,
    /// The WebAuthn assertion (`PublicKeyCredential` as JSON).
    #[schema(value_type = Option<Object>)]
    pub passkey: Option<serde_json::Value>,
}

impl std::fmt::Debug for SecondFactorAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecondFactorAnswer { .. }")
    }
}

/// A TOTP enrolment in progress: scan the QR code (or type the secret),
/// then confirm with a code.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrolment {
    pub otpauth_uri: String,
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    /// The `otpauth://` URI as a QR code (SVG document).
    pub qr_svg: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment { .. }")
    }
}

/// A code from the authenticator app.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

impl std::fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpCode { .. }")
    }
}

/// Single-use recovery codes, shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    pub codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes({} codes)", self.codes.len())
    }
}

/// A user's second factors.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecondFactorStatus {
    pub totp: bool,
    pub passkeys: u32,
    pub recovery_codes_left: u32,
    /// Whether the company's policy requires a second factor for this user.
    pub required: bool,
}

/// An administrator's per-user sign-in settings; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSignInSettings {
    /// Mark the user as needing a second factor (policy `selected`).
    pub two_factor_required: Option<bool>,
    /// Make the user choose a new password at next sign-in.
    pub must_change_password: Option<bool>,
    /// The user's idle timeout, 10 to 1440 minutes; 0 returns to the company default.
    pub idle_timeout_minutes: Option<u32>,
}

/// `POST /api/v1/users/{user_id}/api-keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    pub label: String,
    /// `records:read`, `records:write`, `records:reveal` (show protected
    /// fields in full, for a user who may).
    pub scopes: Vec<String>,
    /// 1 to 365.
    pub expires_in_days: u32,
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub user: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key: `key` is shown this once; send it as
/// `Authorization: Bearer <key>`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub key: String,
    #[serde(flatten)]
    pub view: ApiKeyView,
}

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/auth/second-factor/passkeys/begin`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyBegin {
    /// A name to tell this passkey from others, e.g. "work laptop".
    pub label: String,
}

/// Options for `navigator.credentials.create()`, and the ceremony id to
/// finish with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistrationStart {
    pub challenge: String,
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// `POST /api/v1/auth/second-factor/passkeys/finish`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyRegistrationFinish {
    pub challenge: String,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

/// A registered passkey; `recovery_codes` come with the first second
/// factor only, shown this once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistered {
    pub label: String,
    pub recovery_codes: Option<Vec<String>>,
}

impl std::fmt::Debug for PasskeyRegistered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyRegistered")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

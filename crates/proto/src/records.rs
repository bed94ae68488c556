//! Records and their history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Field values by field key.
pub type RecordData = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    /// Opaque id, unique across all companies.
    pub id: String,
    pub record_type: String,
    /// Increases by one with every change; send it back as `expected_version`.
    pub version: i64,
    #[schema(value_type = Object)]
    pub data: RecordData,
    /// Department code the record belongs to.
    pub department: Option<String>,
    /// User ID of the owner (its creator unless changed).
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when the record is soft-deleted; `POST .../restore` brings it back.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Protected fields shown masked (e.g. `********1234`). Ask for the
    /// full value with `?reveal=<field>,...` if you may reveal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
    /// Protected fields shown in full because `reveal` asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revealed: Vec<String>,
    /// Fields classified above your security level: not returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecord {
    #[schema(value_type = Object)]
    pub data: RecordData,
    /// Department code; defaults to the creator's department.
    #[serde(default)]
    pub department: Option<String>,
}

/// A merge patch: fields present are set, `null` clears an optional field,
/// fields left out are unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    #[schema(value_type = Object)]
    pub data: RecordData,
    /// When given, the update is refused with `version_conflict` unless the
    /// record is still at this version.
    #[serde(default)]
    pub expected_version: Option<i64>,
}

/// `POST /api/v1/records/{type}/{id}/restore`. Without `version` a
/// soft-deleted record is brought back as it was; with `version` the record's
/// data is set back to that earlier version (as a new version).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRecord {
    #[serde(default)]
    pub version: Option<i64>,
}

/// What a version of a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
    Restore,
    Revert,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Restore => "restore",
            ChangeKind::Revert => "revert",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "create" => ChangeKind::Create,
            "update" => ChangeKind::Update,
            "delete" => ChangeKind::Delete,
            "restore" => ChangeKind::Restore,
            "revert" => ChangeKind::Revert,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordVersionView {
    pub version: i64,
    pub change: ChangeKind,
    #[schema(value_type = Object)]
    pub data: RecordData,
    pub deleted: bool,
    pub changed_at: DateTime<Utc>,
    /// User ID of whoever made the change.
    pub changed_by: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revealed: Vec<String>,
    /// Fields classified above your security level: not returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

/// Which records a list returns with respect to soft deletion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeletedFilter {
    /// Only records that are not deleted (default).
    #[default]
    Exclude,
    /// Deleted and not deleted.
    Include,
    /// Only deleted records.
    Only,
}

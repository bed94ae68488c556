//! Record types and their fields, with classification and PII kind.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How important a piece of information is. Ordered: public < internal <
/// confidential < restricted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

/// What kind of personal information a field holds. Drives validation,
/// encryption and masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    None,
    Name,
    Email,
    Phone,
    Address,
    NationalId,
    BankAccount,
    CardNumber,
    Salary,
    Other,
}

/// The type of a field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string of at most 4096 characters.
    Text,
    /// An e-mail address.
    Email,
    /// A phone number: digits, spaces and `+-().`.
    Phone,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A whole number.
    Integer,
    /// A decimal number written as a string, e.g. `"1234.50"`.
    Decimal,
    /// `true` or `false`.
    Boolean,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
    };
}

str_enum!(Classification { Public => "public", Internal => "internal", Confidential => "confidential", Restricted => "restricted" });
str_enum!(PiiKind {
    None => "none", Name => "name", Email => "email", Phone => "phone", Address => "address",
    NationalId => "national_id", BankAccount => "bank_account", CardNumber => "card_number",
    Salary => "salary", Other => "other",
});
str_enum!(FieldType {
    Text => "text", Email => "email", Phone => "phone", Date => "date", Integer => "integer",
    Decimal => "decimal", Boolean => "boolean",
});

/// One field of a record type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// Key used in record data, e.g. `national_id` (lower-case letters, digits, `_`).
    pub key: String,
    /// Label for people.
    pub label: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    pub classification: Classification,
    #[serde(default = "pii_none")]
    pub pii_kind: PiiKind,
    /// A record cannot be saved without it.
    #[serde(default)]
    pub required: bool,
}

fn pii_none() -> PiiKind {
    PiiKind::None
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordTypeView {
    pub key: String,
    pub name: String,
    pub classification: Classification,
    pub fields: Vec<FieldDef>,
    /// Part of the default catalogue created with the company.
    pub built_in: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecordType {
    /// Key used in paths, e.g. `contract` (lower-case letters, digits, `_`).
    pub key: String,
    pub name: String,
    pub classification: Classification,
    pub fields: Vec<FieldDef>,
}

/// Adds fields to an existing record type. Existing fields are never
/// changed here, so records already stored stay valid.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFields {
    pub fields: Vec<FieldDef>,
}

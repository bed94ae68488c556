//! The record types every new company starts with.

use strongroom_proto::{Classification as C, FieldDef, FieldType as T, PiiKind as P};

/// A record type as the domain defines it (before it is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordTypeDef {
    pub key: String,
    pub name: String,
    pub classification: C,
    pub fields: Vec<FieldDef>,
}

fn f(key: &str, label: &str, t: T, c: C, p: P, required: bool) -> FieldDef {
    FieldDef {
        key: key.into(),
        label: label.into(),
        field_type: t,
        classification: c,
        pii_kind: p,
        required,
    }
}

/// The fields shared by customers, vendors and employees.
fn party_fields() -> Vec<FieldDef> {
    vec![
        f("name", "Name", T::Text, C::Internal, P::Name, true),
        f(
            "email",
            "E-mail",
            T::Email,
            C::Confidential,
            P::Email,
            false,
        ),
        f("phone", "Phone", T::Phone, C::Confidential, P::Phone, false),
        f(
            "address",
            "Address",
            T::Text,
            C::Confidential,
            P::Address,
            false,
        ),
        f(
            "national_id",
            "National ID number",
            T::Text,
            C::Restricted,
            P::NationalId,
            false,
        ),
        f(
            "bank_account",
            "Bank account number",
            T::Text,
            C::Restricted,
            P::BankAccount,
            false,
        ),
        f(
            "card_number",
            "Card number",
            T::Text,
            C::Restricted,
            P::CardNumber,
            false,
        ),
    ]
}

pub fn default_catalogue() -> Vec<RecordTypeDef> {
    let mut employee = party_fields();
    employee.extend([
        f(
            "department",
            "Department",
            T::Text,
            C::Internal,
            P::None,
            false,
        ),
        f(
            "hired_on",
            "Hired on",
            T::Date,
            C::Confidential,
            P::None,
            false,
        ),
        f(
            "salary",
            "Salary",
            T::Decimal,
            C::Restricted,
            P::Salary,
            false,
        ),
    ]);
    vec![
        RecordTypeDef {
            key: "customer".into(),
            name: "Customer".into(),
            classification: C::Confidential,
            fields: party_fields(),
        },
        RecordTypeDef {
            key: "vendor".into(),
            name: "Vendor".into(),
            classification: C::Confidential,
            fields: party_fields(),
        },
        RecordTypeDef {
            key: "employee".into(),
            name: "Employee".into(),
            classification: C::Confidential,
            fields: employee,
        },
    ]
}

//! Record data: validation against the record type, merge patches, and the
//! rules for defining record types.

use crate::catalogue::RecordTypeDef;
use crate::error::{DomainError, DomainResult};
use crate::ident;
use serde_json::Value;
use std::collections::HashSet;
use strongroom_proto::{FieldDef, FieldType, RecordData};

/// Longest text value, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most fields a record type may have.
pub const MAX_FIELDS: usize = 200;
/// Longest value that takes part in exact-match filtering (longer values
/// are stored but not indexed).
pub const MAX_INDEXED_CHARS: usize = 256;

/// Checks a new or changed record type definition.
pub fn check_type_def(def: &RecordTypeDef) -> DomainResult<()> {
    ident::key("record type key", &def.key)?;
    ident::display_text("record type name", &def.name, 200)?;
    check_new_fields(&[], &def.fields)
}

/// Checks fields to be added next to `existing` ones.
pub fn check_new_fields(existing: &[FieldDef], new: &[FieldDef]) -> DomainResult<()> {
    if existing.len() + new.len() > MAX_FIELDS {
        return Err(DomainError::invalid(format!(
            "a record type may have at most {MAX_FIELDS} fields"
        )));
    }
    let mut seen: HashSet<&str> = existing.iter().map(|f| f.key.as_str()).collect();
    for f in new {
        ident::key("field key", &f.key)?;
        ident::display_text("field label", &f.label, 200)?;
        if !seen.insert(f.key.as_str()) {
            return Err(DomainError::Conflict(format!(
                "field '{}' is defined twice",
                f.key
            )));
        }
    }
    Ok(())
}

/// Checks a merge patch against the fields and applies it to `current`.
/// `null` removes a value. The result must have every required field.
pub fn apply_patch(
    fields: &[FieldDef],
    current: &RecordData,
    patch: &RecordData,
) -> DomainResult<RecordData> {
    let mut next = current.clone();
    for (key, value) in patch {
        let field = fields.iter().find(|f| &f.key == key).ok_or_else(|| {
            DomainError::UnknownField(format!(
                "this record type has no field '{}'; see GET /api/v1/record-types for its fields",
                truncate(key, 64)
            ))
        })?;
        if value.is_null() {
            next.remove(key);
        } else {
            next.insert(key.clone(), normalise_value(field, value)?);
        }
    }
    for f in fields.iter().filter(|f| f.required) {
        if !next.contains_key(&f.key) {
            return Err(DomainError::invalid(format!(
                "field '{}' is required",
                f.key
            )));
        }
    }
    Ok(next)
}

/// Validates one value and returns it in its normal form (for national ID,
/// bank account and card numbers, with their own checks applied).
pub fn normalise_value(field: &FieldDef, value: &Value) -> DomainResult<Value> {
    let v = normalise_typed(field, value)?;
    match (&v, field.pii_kind) {
        (
            Value::String(s),
            strongroom_proto::PiiKind::NationalId
            | strongroom_proto::PiiKind::BankAccount
            | strongroom_proto::PiiKind::CardNumber,
        ) => Ok(Value::String(crate::pii::normalise(field, s)?)),
        _ => Ok(v),
    }
}

fn normalise_typed(field: &FieldDef, value: &Value) -> DomainResult<Value> {
    let bad =
        |expect: &str| DomainError::invalid(format!("field '{}' must be {expect}", field.key));
    match field.field_type {
        FieldType::Text => {
            let s = value.as_str().ok_or_else(|| bad("a string"))?;
            Ok(Value::String(text(field, s)?))
        }
        FieldType::Email => {
            let s = value.as_str().ok_or_else(|| bad("a string"))?;
            Ok(Value::String(ident::email(
                &format!("field '{}'", field.key),
                s,
            )?))
        }
        FieldType::Phone => {
            let s = value.as_str().ok_or_else(|| bad("a string"))?;
            let s = s.trim();
            let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
            if s.len() > 40
                || !(4..=20).contains(&digits)
                || !s
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            {
                return Err(bad(
                    "a phone number: 4 to 20 digits, with spaces and + - ( ) . allowed",
                ));
            }
            Ok(Value::String(s.to_owned()))
        }
        FieldType::Date => {
            let s = value.as_str().ok_or_else(|| bad("a date string"))?;
            let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map_err(|_| bad("a date written YYYY-MM-DD"))?;
            Ok(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        FieldType::Integer => value
            .as_i64()
            .map(Value::from)
            .ok_or_else(|| bad("a whole number")),
        FieldType::Decimal => {
            let s = match value {
                Value::String(s) => s.trim().to_owned(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad("a decimal number such as \"1234.50\"")),
            };
            if is_decimal(&s) {
                Ok(Value::String(s))
            } else {
                Err(bad("a decimal number such as \"1234.50\""))
            }
        }
        FieldType::Boolean => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| bad("true or false")),
    }
}

fn text(field: &FieldDef, s: &str) -> DomainResult<String> {
    let s = s.trim();
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(DomainError::invalid(format!(
            "field '{}' must be at most {MAX_TEXT_CHARS} characters",
            field.key
        )));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(DomainError::invalid(format!(
            "field '{}' must not contain control characters",
            field.key
        )));
    }
    Ok(s.to_owned())
}

fn is_decimal(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    !int.is_empty()
        && int.len() <= 30
        && frac.len() <= 10
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit())
        && !(body.contains('.') && frac.is_empty())
}

/// The text under which a value takes part in exact-match filters, or
/// `None` for values too long to index. Filters compare the same form.
pub fn index_text(value: &Value) -> Option<String> {
    let s = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (s.chars().count() <= MAX_INDEXED_CHARS).then_some(s)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strongroom_proto::{Classification, PiiKind};

    fn fields() -> Vec<FieldDef> {
        let f = |key: &str, t, required| FieldDef {
            key: key.into(),
            label: key.into(),
            field_type: t,
            classification: Classification::Internal,
            pii_kind: PiiKind::None,
            required,
        };
        vec![
            f("name", FieldType::Text, true),
            f("email", FieldType::Email, false),
            f("born", FieldType::Date, false),
            f("n", FieldType::Integer, false),
            f("amount", FieldType::Decimal, false),
        ]
    }

    fn data(v: Value) -> RecordData {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn patch_validates_and_merges() {
        let base = apply_patch(
            &fields(),
            &RecordData::new(),
            &data(json!({"name": " Acme "})),
        )
        .unwrap();
        assert_eq!(base["name"], "Acme");
        let next = apply_patch(
            &fields(),
            &base,
            &data(json!({"email": "a@b.co", "amount": 12.5})),
        )
        .unwrap();
        assert_eq!(next["name"], "Acme");
        assert_eq!(next["amount"], "12.5");
        let cleared = apply_patch(&fields(), &next, &data(json!({"email": null}))).unwrap();
        assert!(!cleared.contains_key("email"));
    }

    #[test]
    fn patch_refuses_bad_values() {
        let f = fields();
        let empty = RecordData::new();
        assert!(matches!(
            apply_patch(&f, &empty, &data(json!({"name": "x", "nope": 1}))),
            Err(DomainError::UnknownField(_))
        ));
        assert!(apply_patch(&f, &empty, &data(json!({"email": "a@b.co"}))).is_err());
        for bad in [
            json!({"name": "x", "born": "2024-02-30"}),
            json!({"name": "x", "n": "7"}),
            json!({"name": "x", "amount": "1e5"}),
            json!({"name": 5}),
            json!({"name": "x".repeat(MAX_TEXT_CHARS + 1)}),
        ] {
            assert!(
                apply_patch(&f, &empty, &data(bad.clone())).is_err(),
                "{bad}"
            );
        }
        let with_name = data(json!({"name": "x"}));
        assert!(apply_patch(&f, &with_name, &data(json!({"name": null}))).is_err());
    }

    #[test]
    fn decimals() {
        for ok in ["0", "-12.50", "1234567.1"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in ["", "-", "1.", ".5", "1,5", "1e3", "--1"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}

//! Sensitive values: which fields are protected, how their values are
//! checked and normalised before encryption, and how they are masked.

use crate::error::{DomainError, DomainResult};
use strongroom_proto::{Classification, FieldDef, PiiKind};

/// Fields whose values are encrypted at rest and masked on display: national
/// ID, bank account and card numbers, and anything classified restricted.
pub fn is_protected(f: &FieldDef) -> bool {
    matches!(
        f.pii_kind,
        PiiKind::NationalId | PiiKind::BankAccount | PiiKind::CardNumber
    ) || f.classification == Classification::Restricted
}

fn compact(s: &str, seps: &[char]) -> String {
    s.trim()
        .chars()
        .filter(|c| !seps.contains(c))
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Checks a value of a PII kind and returns its normal form (separators
/// removed, letters upper-case), which is what is encrypted and indexed.
pub fn normalise(field: &FieldDef, value: &str) -> DomainResult<String> {
    let bad = |what: &str| DomainError::invalid(format!("field '{}' {what}", field.key));
    match field.pii_kind {
        PiiKind::CardNumber => {
            let v = compact(value, &[' ', '-']);
            if !(12..=19).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "must be a card number of 12 to 19 digits (spaces and '-' allowed)",
                ));
            }
            if !luhn_ok(&v) {
                return Err(bad(
                    "is not a valid card number (check digit wrong); check for a typing error",
                ));
            }
            Ok(v)
        }
        PiiKind::BankAccount => {
            let v = compact(value, &[' ', '-', '.']);
            if v.len() >= 2 && v.as_bytes()[..2].iter().all(|b| b.is_ascii_alphabetic()) {
                if !(15..=34).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad(
                        "looks like an IBAN but has the wrong length or characters",
                    ));
                }
                if !iban_ok(&v) {
                    return Err(bad(
                        "is not a valid IBAN (check digits wrong); check for a typing error",
                    ));
                }
                return Ok(v);
            }
            if !(6..=34).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "must be a bank account number: 6 to 34 digits (spaces, '-' and '.' allowed), or an IBAN",
                ));
            }
            Ok(v)
        }
        PiiKind::NationalId => {
            let v = compact(value, &[' ', '-', '.']);
            if v.len() == 13 && v.bytes().all(|b| b.is_ascii_digit()) {
                check_kr_rrn(&v).map_err(|m| bad(&m))?;
                return Ok(v);
            }
            if v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit()) {
                check_vn_cccd(&v).map_err(|m| bad(&m))?;
                return Ok(v);
            }
            if !(5..=20).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad(
                    "must be a national ID number: 5 to 20 letters and digits",
                ));
            }
            Ok(v)
        }
        // Other restricted fields are kept as validated by their type.
        _ => Ok(value.to_owned()),
    }
}

fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

fn iban_ok(iban: &str) -> bool {
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let n = match c.to_digit(36) {
            Some(n) => n,
            None => return false,
        };
        // Letters count as two digits (A = 10 ... Z = 35).
        rem = if n >= 10 {
            (rem * 100 + n) % 97
        } else {
            (rem * 10 + n) % 97
        };
    }
    rem == 1
}

/// Vietnam's 12-digit citizen ID (CCCD): a province code 001-096, then a
/// century/sex digit, the birth year's last two digits and six more.
fn check_vn_cccd(v: &str) -> Result<(), String> {
    let province: u32 = v[..3].parse().unwrap_or(0);
    if !(1..=96).contains(&province) {
        return Err("looks like a Vietnamese citizen ID (12 digits) but its province code (first 3 digits) is not 001-096".into());
    }
    Ok(())
}

/// Korea's 13-digit resident registration number: YYMMDD, then a digit 1-8
/// for century and sex. (Numbers issued since October 2020 carry no check
/// digit, so none is required.)
fn check_kr_rrn(v: &str) -> Result<(), String> {
    let digit = |i: usize| u32::from(v.as_bytes()[i] - b'0');
    let century = match digit(6) {
        1 | 2 | 5 | 6 => 1900,
        3 | 4 | 7 | 8 => 2000,
        9 | 0 => 1800,
        _ => return Err("has a bad 7th digit".into()),
    };
    let year = century + digit(0) * 10 + digit(1);
    let month = digit(2) * 10 + digit(3);
    let day = digit(4) * 10 + digit(5);
    if chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_none() {
        return Err("looks like a Korean resident registration number (13 digits) but its first six digits are not a birth date YYMMDD".into());
    }
    Ok(())
}

/// What a reader who may not reveal the value sees.
pub fn mask(field: &FieldDef, plain: &str) -> String {
    let keep = match field.pii_kind {
        PiiKind::CardNumber | PiiKind::BankAccount => 4,
        PiiKind::NationalId => 3,
        _ => 0,
    };
    let n = plain.chars().count();
    if keep == 0 || n <= keep {
        return "****".into();
    }
    let tail: String = plain.chars().skip(n - keep).collect();
    format!("{}{tail}", "*".repeat(n - keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_proto::FieldType;

    fn field(kind: PiiKind) -> FieldDef {
        FieldDef {
            key: "f".into(),
            label: "F".into(),
            field_type: FieldType::Text,
            classification: Classification::Restricted,
            pii_kind: kind,
            required: false,
        }
    }

    #[test]
    fn cards() {
        let f = field(PiiKind::CardNumber);
        assert_eq!(
            normalise(&f, "4111 1111-1111 1111").unwrap(),
            "4111111111111111"
        );
        assert!(normalise(&f, "4111 1111 1111 1112").is_err(), "Luhn");
        assert!(normalise(&f, "41111").is_err());
        assert!(normalise(&f, "4111x11111111111").is_err());
        assert_eq!(mask(&f, "4111111111111111"), "************1111");
    }

    #[test]
    fn bank_accounts_and_ibans() {
        let f = field(PiiKind::BankAccount);
        assert_eq!(normalise(&f, "0071 000 123456").unwrap(), "0071000123456");
        assert_eq!(
            normalise(&f, "de89 3704 0044 0532 0130 00").unwrap(),
            "DE89370400440532013000"
        );
        assert!(
            normalise(&f, "DE89370400440532013001").is_err(),
            "IBAN check digits"
        );
        assert!(normalise(&f, "12a45").is_err());
        assert_eq!(mask(&f, "0071000123456"), "*********3456");
    }

    #[test]
    fn national_ids() {
        let f = field(PiiKind::NationalId);
        assert_eq!(normalise(&f, "079 201 001 234").unwrap(), "079201001234");
        assert!(normalise(&f, "999201001234").is_err(), "VN province");
        assert_eq!(normalise(&f, "900101-1234567").unwrap(), "9001011234567");
        assert!(normalise(&f, "901301-1234567").is_err(), "KR month 13");
        assert_eq!(normalise(&f, "ab123456").unwrap(), "AB123456");
        assert!(normalise(&f, "12").is_err());
        assert_eq!(mask(&f, "079201001234"), "*********234");
    }

    #[test]
    fn protection() {
        let mut f = field(PiiKind::None);
        assert!(is_protected(&f), "restricted");
        f.classification = Classification::Confidential;
        assert!(!is_protected(&f));
        f.pii_kind = PiiKind::CardNumber;
        assert!(is_protected(&f));
        assert_eq!(mask(&field(PiiKind::Salary), "123456"), "****");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use strongroom_proto::FieldType;

    fn field(kind: PiiKind) -> FieldDef {
        FieldDef {
            key: "f".into(),
            label: "F".into(),
            field_type: FieldType::Text,
            classification: Classification::Restricted,
            pii_kind: kind,
            required: false,
        }
    }

    proptest! {
        /// What is accepted is already in normal form: normalising again
        /// changes nothing, so stored values and search values always agree.
        #[test]
        fn normalisation_is_idempotent(raw in "[0-9A-Za-z .-]{0,40}", kind in 0usize..3) {
            let f = field([PiiKind::CardNumber, PiiKind::BankAccount, PiiKind::NationalId][kind]);
            if let Ok(n) = normalise(&f, &raw) {
                let again = normalise(&f, &n);
                prop_assert_eq!(again, Ok(n));
            }
        }

        /// A mask shows at most the last 4 characters and never the rest.
        #[test]
        fn masks_hide_all_but_the_tail(value in "[0-9]{5,19}", kind in 0usize..4) {
            let f = field([PiiKind::CardNumber, PiiKind::BankAccount, PiiKind::NationalId, PiiKind::Salary][kind]);
            let m = mask(&f, &value);
            let shown: String = m.chars().filter(|c| *c != '*').collect();
            prop_assert!(shown.len() <= 4);
            prop_assert!(value.ends_with(&shown));
        }

        /// Card numbers that pass are Luhn-valid digit strings of 12 to 19.
        #[test]
        fn accepted_cards_are_well_formed(raw in "[0-9 -]{10,24}") {
            if let Ok(n) = normalise(&field(PiiKind::CardNumber), &raw) {
                prop_assert!((12..=19).contains(&n.len()));
                prop_assert!(n.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(luhn_ok(&n));
            }
        }
    }
}

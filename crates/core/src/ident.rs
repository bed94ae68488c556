//! Names people type: company codes, user IDs, department codes, keys.
//! Each is checked and normalised in one place.

use crate::error::{DomainError, DomainResult};

fn check_chars(
    what: &str,
    value: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(char) -> bool,
    rule: &str,
) -> DomainResult<()> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(DomainError::invalid(format!(
            "{what} must be {min} to {max} characters long ({rule})"
        )));
    }
    if !value.chars().all(allowed) {
        return Err(DomainError::invalid(format!(
            "{what} may contain only {rule}"
        )));
    }
    Ok(())
}

/// Company codes are case-insensitive and kept upper-case: `ACME`, `VN-01`.
pub fn company_code(raw: &str) -> DomainResult<String> {
    let v = raw.trim().to_ascii_uppercase();
    check_chars(
        "company code",
        &v,
        2,
        32,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        "letters, digits, '_' and '-'",
    )?;
    Ok(v)
}

/// User IDs are case-insensitive and kept lower-case: `master`, `j.smith`.
pub fn user_id(raw: &str) -> DomainResult<String> {
    let v = raw.trim().to_ascii_lowercase();
    check_chars(
        "user ID",
        &v,
        1,
        64,
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'),
        "letters, digits, '_', '-', '.' and '@'",
    )?;
    Ok(v)
}

/// Department codes are kept upper-case: `SALES`, `HR`.
pub fn department_code(raw: &str) -> DomainResult<String> {
    let v = raw.trim().to_ascii_uppercase();
    check_chars(
        "department code",
        &v,
        1,
        32,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        "letters, digits, '_' and '-'",
    )?;
    Ok(v)
}

/// Keys of record types and fields: `customer`, `national_id`.
pub fn key(what: &str, raw: &str) -> DomainResult<String> {
    let v = raw.trim();
    check_chars(
        what,
        v,
        1,
        48,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
        "lower-case letters, digits and '_'",
    )?;
    if !v.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(DomainError::invalid(format!(
            "{what} must start with a lower-case letter"
        )));
    }
    Ok(v.to_owned())
}

/// Free-text names shown to people (company name, display name, labels).
pub fn display_text(what: &str, raw: &str, max: usize) -> DomainResult<String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(DomainError::invalid(format!("{what} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(DomainError::invalid(format!(
            "{what} must be at most {max} characters"
        )));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(DomainError::invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}

/// A plausible e-mail address: one `@`, something on both sides, a dot in
/// the domain, no spaces. Deliverability is not our business.
pub fn email(what: &str, raw: &str) -> DomainResult<String> {
    let v = raw.trim();
    let ok = v.len() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(v.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.')
               && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(DomainError::invalid(format!(
            "{what} is not an e-mail address (expected name@example.com)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_normalised() {
        assert_eq!(company_code(" acme ").unwrap(), "ACME");
        assert_eq!(user_id("J.Smith").unwrap(), "j.smith");
        assert!(company_code("A").is_err());
        assert!(company_code("AC ME").is_err());
        assert!(user_id("x'; DROP TABLE").is_err());
        assert!(key("field key", "1abc").is_err());
        assert!(key("field key", "Name").is_err());
        assert_eq!(key("field key", "national_id").unwrap(), "national_id");
    }

    #[test]
    fn emails() {
        assert!(email("email", "a@b.co").is_ok());
        assert!(email("email", "a@b").is_err());
        assert!(email("email", "a b@c.de").is_err());
        assert!(email("email", "@c.de").is_err());
        assert!(email("email", "a@@c.de").is_err());
    }
}

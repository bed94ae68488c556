//! The baseline password rule (OWASP ASVS: at least 12 characters, no
//! composition rules, no forced expiry). Company-specific rules build on it.

use crate::error::{DomainError, DomainResult};

pub const MIN_LEN: usize = 12;
/// Long enough for any passphrase, short enough that hashing it is cheap.
pub const MAX_LEN: usize = 256;

pub fn check_baseline(password: &str) -> DomainResult<()> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(DomainError::invalid(format!(
            "password must be at least {MIN_LEN} characters; a phrase of a few words is easiest to remember"
        )));
    }
    if n > MAX_LEN {
        return Err(DomainError::invalid(format!(
            "password must be at most {MAX_LEN} characters"
        )));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err(DomainError::invalid(
            "password must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline() {
        assert!(check_baseline("short").is_err());
        assert!(check_baseline("correct horse battery").is_ok());
        assert!(check_baseline(&"x".repeat(257)).is_err());
        // Length counts characters, not bytes.
        assert!(check_baseline("ééééééééééé").is_err());
    }
}

/// A company's password rules. The defaults follow OWASP ASVS: length 12 or
/// more, a zxcvbn strength of at least 3 of 4, no composition rules, no
/// reuse checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordRules {
    pub min_length: usize,
    /// zxcvbn score 0..=4.
    pub min_score: u8,
    /// How many of lower case, upper case, digits and other characters
    /// must appear (0..=4).
    pub require_classes: u8,
    /// How many earlier passwords may not be reused (0..=24).
    pub history: u8,
}

impl Default for PasswordRules {
    fn default() -> Self {
        PasswordRules {
            min_length: MIN_LEN,
            min_score: 3,
            require_classes: 0,
            history: 0,
        }
    }
}

impl PasswordRules {
    pub fn checked(self) -> DomainResult<Self> {
        if !(MIN_LEN..=128).contains(&self.min_length)
            || self.min_score > 4
            || self.require_classes > 4
            || self.history > 24
        {
            return Err(DomainError::invalid(
                "min_length is 12 to 128, min_score 0 to 4, require_classes 0 to 4, history 0 to 24",
            ));
        }
        Ok(self)
    }
}

/// Who the password is for: it must not contain these.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub user_id: &'a str,
    pub display_name: &'a str,
    pub company_code: &'a str,
}

/// Checks a new password against the company's rules. Each refusal names
/// the rule and what to do.
pub fn check(password: &str, rules: &PasswordRules, owner: Owner<'_>) -> DomainResult<()> {
    check_baseline(password)?;
    let n = password.chars().count();
    if n < rules.min_length {
        return Err(DomainError::invalid(format!(
            "password must be at least {} characters",
            rules.min_length
        )));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if classes < usize::from(rules.require_classes) {
        return Err(DomainError::invalid(format!(
            "password must mix at least {} of: lower case, upper case, digits, other characters",
            rules.require_classes
        )));
    }
    let lower = password.to_lowercase();
    let mut personal: Vec<String> = vec![
        owner.user_id.to_lowercase(),
        owner.company_code.to_lowercase(),
    ];
    personal.extend(owner.display_name.split_whitespace().map(str::to_lowercase));
    if let Some(p) = personal
        .iter()
        .find(|p| p.chars().count() >= 3 && lower.contains(p.as_str()))
    {
        return Err(DomainError::invalid(format!(
            "password must not contain your user ID, name or company code ('{p}')"
        )));
    }
    if rules.min_score > 0 {
        let inputs = [owner.user_id, owner.display_name, owner.company_code];
        let e = zxcvbn::zxcvbn(password, &inputs);
        let score = u8::from(e.score());
        if score < rules.min_score {
            let hint = e
                .feedback()
                .and_then(|f| f.warning().map(|w| format!(" ({w})")))
                .unwrap_or_default();
            return Err(DomainError::invalid(format!(
                "password is too easy to guess{hint}: strength {score} of 4, at least {} needed; a phrase of several unrelated words works well",
                rules.min_score
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    const OWNER: Owner<'static> = Owner {
        user_id: "ann.lee",
        display_name: "Ann Lee",
        company_code: "ACME",
    };

    #[test]
    fn strength_and_personal_data() {
        let r = PasswordRules::default();
        for ok in [
            "correct horse battery staple",
            "a brand new passphrase",
            "another fine passphrase",
            "another long password",
        ] {
            assert!(
                check(ok, &r, OWNER).is_ok(),
                "{ok}: {:?}",
                check(ok, &r, OWNER)
            );
        }
        assert!(check("password1234", &r, OWNER)
            .unwrap_err()
            .to_string()
            .contains("too easy"));
        assert!(check("aaaaaaaaaaaaaaaa", &r, OWNER).is_err());
        assert!(check("acme-is-my-secret-door", &r, OWNER)
            .unwrap_err()
            .to_string()
            .contains("company code"));
        assert!(check("ann.lee rides bicycles", &r, OWNER).is_err());
        let strict = PasswordRules {
            require_classes: 3,
            min_length: 16,
            ..r
        };
        assert!(check("correct horse battery staple", &strict, OWNER)
            .unwrap_err()
            .to_string()
            .contains("mix"));
        assert!(check("Correct horse battery staple 9", &strict, OWNER).is_ok());
    }
}

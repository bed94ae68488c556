//! The baseline password rule (OWASP ASVS: at least 12 characters, no
//! composition rules, no forced expiry). Company-specific rules build on it.

use chrono::{DateTime, Duration, Utc};

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
    /// A password older than this many days must be changed at sign-in
    /// (0: never; off by default, as NIST SP 800-63B advises).
    pub max_age_days: u16,
    /// Sign-in warns this many days before expiry.
    pub warn_days: u16,
    /// A password must be this many days old before its owner changes it
    /// again (stops cycling through the history at once).
    pub min_age_days: u16,
}

impl Default for PasswordRules {
    fn default() -> Self {
        PasswordRules {
            min_length: MIN_LEN,
            min_score: 3,
            require_classes: 0,
            history: 0,
            max_age_days: 0,
            warn_days: 14,
            min_age_days: 0,
        }
    }
}

impl PasswordRules {
    pub fn checked(self) -> DomainResult<Self> {
        if !(MIN_LEN..=128).contains(&self.min_length)
            || self.min_score > 4
            || self.require_classes > 4
            || self.history > 24
            || self.max_age_days > 3650
            || self.warn_days > 90
            || self.min_age_days > 30
            || (self.max_age_days > 0 && self.min_age_days >= self.max_age_days)
        {
            return Err(DomainError::invalid(
                "min_length is 12 to 128, min_score 0 to 4, require_classes 0 to 4, history 0 to 24, \
                 max_age_days 0 (never) to 3650, warn_days 0 to 90, min_age_days 0 to 30 and below max_age_days",
            ));
        }
        Ok(self)
    }

    /// Where a password set at `changed_at` stands at `now`.
    pub fn age(&self, changed_at: DateTime<Utc>, now: DateTime<Utc>) -> PasswordAge {
        if self.max_age_days == 0 {
            return PasswordAge::Current;
        }
        let expires = changed_at + Duration::days(i64::from(self.max_age_days));
        if now >= expires {
            PasswordAge::Expired
        } else if now >= expires - Duration::days(i64::from(self.warn_days)) {
            PasswordAge::ExpiresSoon {
                expires_at: expires,
            }
        } else {
            PasswordAge::Current
        }
    }

    /// When the owner may next change a password set at `changed_at`, if
    /// not yet.
    pub fn may_change_at(
        &self,
        changed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let at = changed_at + Duration::days(i64::from(self.min_age_days));
        (now < at).then_some(at)
    }
}

/// A password's standing under the maximum-age rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAge {
    Current,
    ExpiresSoon { expires_at: DateTime<Utc> },
    Expired,
}

/// Whether the password is on the bundled list of common passwords.
pub fn is_common(password: &str) -> bool {
    static LIST: &str = include_str!("../data/common-passwords.txt");
    let lower = password.to_lowercase();
    LIST.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l == lower)
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
    if is_common(password) {
        return Err(DomainError::invalid(
            "that password is on the list of common and breached passwords; choose another",
        ));
    }
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
            "plum orchard violin tram",
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
        assert!(check("password4321x", &r, OWNER)
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
        assert!(check("plum orchard violin tramway", &strict, OWNER)
            .unwrap_err()
            .to_string()
            .contains("mix"));
        assert!(check("Plum orchard violin tramway 9", &strict, OWNER).is_ok());
    }

    #[test]
    fn common_passwords_are_refused_whatever_the_score_rule() {
        let r = PasswordRules {
            min_score: 0,
            ..Default::default()
        };
        for bad in [
            "Password1234",
            "correct horse battery staple",
            "QWERTYUIOP123",
        ] {
            assert!(check(bad, &r, OWNER)
                .unwrap_err()
                .to_string()
                .contains("common"));
        }
        assert!(check("plum orchard violin tram", &r, OWNER).is_ok());
    }

    #[test]
    fn age_rules() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let r = PasswordRules {
            max_age_days: 90,
            warn_days: 14,
            min_age_days: 1,
            ..Default::default()
        };
        assert_eq!(r.age(t0, t0 + Duration::days(75)), PasswordAge::Current);
        assert_eq!(
            r.age(t0, t0 + Duration::days(76)),
            PasswordAge::ExpiresSoon {
                expires_at: t0 + Duration::days(90)
            }
        );
        assert_eq!(r.age(t0, t0 + Duration::days(90)), PasswordAge::Expired);
        assert_eq!(
            PasswordRules::default().age(t0, t0 + Duration::days(9999)),
            PasswordAge::Current
        );
        assert_eq!(
            r.may_change_at(t0, t0 + Duration::hours(23)),
            Some(t0 + Duration::days(1))
        );
        assert_eq!(r.may_change_at(t0, t0 + Duration::days(1)), None);
        assert!(PasswordRules {
            min_age_days: 90,
            ..r
        }
        .checked()
        .is_err());
    }
}

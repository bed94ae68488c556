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

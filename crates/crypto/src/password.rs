//! Password hashing with Argon2id at OWASP's recommended parameters or
//! stronger. Verification of an unknown user runs against a dummy hash so
//! that every failed sign-in costs the same time.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::CryptoError;

/// Argon2id parameters. The defaults are OWASP's minimum (19 MiB, 2 passes,
/// 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashParams {
    /// Refuses anything weaker than the OWASP minimum.
    pub fn checked(self) -> Result<Self, CryptoError> {
        if self.memory_kib < 19_456 || self.iterations < 2 || self.parallelism < 1 {
            return Err(CryptoError::Hash(
                "Argon2id parameters below the OWASP minimum (m=19456 KiB, t=2, p=1)".into(),
            ));
        }
        Ok(self)
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHasher { .. }")
    }
}

impl PasswordHasher {
    pub fn new(params: HashParams) -> Result<Self, CryptoError> {
        let p = params.checked()?;
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| CryptoError::Hash(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut me = PasswordHasher {
            argon,
            dummy_hash: String::new(),
        };
        me.dummy_hash = me.hash("strongroom-dummy-password-for-timing")?;
        Ok(me)
    }

    /// A PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, CryptoError> {
        let salt_bytes = crate::token::random_bytes::<16>()?;
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| CryptoError::Hash(e.to_string()))?;
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Hash(e.to_string()))
    }

    /// Checks a password against a stored hash. With no stored hash (unknown
    /// user) or an unreadable one, the same work is done against a dummy and
    /// `false` returned.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let real = stored.and_then(|s| PasswordHash::new(s).ok());
        let is_real = real.is_some();
        let target = match real {
            Some(h) => h,
            None => match PasswordHash::new(&self.dummy_hash) {
                Ok(h) => h,
                Err(_) => return false,
            },
        };
        // The parameters inside the stored hash are used, so old hashes keep
        // working after the defaults are raised.
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &target)
            .is_ok();
        ok && is_real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = PasswordHasher::new(HashParams::default()).unwrap();
        let stored = h.hash("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("correct horse battery", Some(&stored)));
        assert!(!h.verify("wrong horse battery", Some(&stored)));
        assert!(!h.verify("correct horse battery", None));
        assert!(!h.verify("x", Some("not a hash")));
    }

    #[test]
    fn weak_parameters_are_refused() {
        let weak = HashParams {
            memory_kib: 1024,
            ..Default::default()
        };
        assert!(PasswordHasher::new(weak).is_err());
    }
}

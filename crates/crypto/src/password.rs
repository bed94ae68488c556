//! Password hashing with Argon2id at OWASP's recommended parameters or
//! stronger. Verification of an unknown user runs against a dummy hash so
//! that every failed sign-in costs the same time.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
        let err = |e: &dyn std::fmt::Display| CryptoError::Hash(e.to_string());
        let salt_bytes = crate::token::random_bytes::<16>()?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| err(&e))?;
        let mut out = [0u8; 32];
        run(&self.argon, password.as_bytes(), &salt_bytes, &mut out).map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(self.argon.params()).map_err(|e| err(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
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
        verify_phc(password.as_bytes(), &target).unwrap_or(false) && is_real
    }
}

/// Argon2's working memory is allocated with this much room at least
/// (33 MiB, of which only the parameters' share is touched). The system
/// allocator (glibc) serves an allocation this large with a fresh mapping
/// and gives it back when freed; at the 19 MiB a verification needs, it
/// instead keeps the memory in each thread's arena after the first free
/// (measured: 870 MB resident after a sign-in flood, against 21 MB).
const WORK_MEMORY_FLOOR_BLOCKS: usize = 33 * 1024;

/// Runs Argon2 into `out` with working memory of our own allocation.
fn run(argon: &Argon2<'_>, pwd: &[u8], salt: &[u8], out: &mut [u8]) -> argon2::Result<()> {
    let n = argon.params().block_count();
    let mut blocks: Vec<Block> = Vec::with_capacity(n.max(WORK_MEMORY_FLOOR_BLOCKS));
    blocks.resize(n, Block::default());
    argon.hash_password_into_with_memory(pwd, salt, out, &mut blocks[..])
}

/// Recomputes a PHC hash with its own algorithm, version, parameters and
/// salt, and compares in constant time.
fn verify_phc(pwd: &[u8], phc: &PasswordHash<'_>) -> Option<bool> {
    let algorithm = Algorithm::try_from(phc.algorithm).ok()?;
    let version = Version::try_from(phc.version.unwrap_or(0x13)).ok()?;
    let expected = phc.hash?;
    let params = Params::try_from(phc).ok()?;
    // Hashes of other output lengths are read with their own length.
    let params = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(expected.len()),
    )
    .ok()?;
    let mut salt_buf = [0u8; 64];
    let salt = phc.salt?.decode_b64(&mut salt_buf).ok()?;
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    run(&argon, pwd, salt, &mut out).ok()?;
    let actual = Output::new(&out).ok()?;
    // Output's equality is constant-time.
    Some(actual == expected)
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
    fn hashes_made_elsewhere_verify_and_ours_verify_elsewhere() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::new(HashParams::default()).unwrap();
        // One made by the argon2 crate's own PHC API, with other parameters.
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(20_000, 3, 1, None).unwrap(),
        );
        let theirs = argon
            .hash_password(b"a long passphrase", &salt)
            .unwrap()
            .to_string();
        assert!(h.verify("a long passphrase", Some(&theirs)));
        assert!(!h.verify("a long passphrasE", Some(&theirs)));
        // Ours, checked by the crate's own verifier.
        let ours = h.hash("a long passphrase").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"a long passphrase", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"another passphrase", &parsed)
            .is_err());
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

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
        self.hash_in(&mut WorkMemory::default(), password)
    }

    /// [`hash`](Self::hash), with Argon2's working memory taken from (and
    /// left in) `work`.
    pub fn hash_in(&self, work: &mut WorkMemory, password: &str) -> Result<String, CryptoError> {
        let err = |e: &dyn std::fmt::Display| CryptoError::Hash(e.to_string());
        let salt_bytes = crate::token::random_bytes::<16>()?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| err(&e))?;
        let mut out = [0u8; 32];
        run(
            &self.argon,
            work,
            password.as_bytes(),
            &salt_bytes,
            &mut out,
        )
        .map_err(|e| err(&e))?;
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
        self.verify_in(&mut WorkMemory::default(), password, stored)
    }

    /// [`verify`](Self::verify), with Argon2's working memory taken from
    /// (and left in) `work`.
    pub fn verify_in(&self, work: &mut WorkMemory, password: &str, stored: Option<&str>) -> bool {
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
        verify_phc(work, password.as_bytes(), &target).unwrap_or(false) && is_real
    }
}

/// Argon2's working memory is allocated with this much room at least
/// (33 MiB, of which only the parameters' share is touched). The system
/// allocator (glibc) serves an allocation this large with a fresh mapping
/// and gives it back when freed; at the 19 MiB a verification needs, it
/// instead keeps the memory in each thread's arena after the first free
/// (measured: 870 MB resident after a sign-in flood, against 21 MB).
const WORK_MEMORY_FLOOR_BLOCKS: usize = 33 * 1024;

/// Argon2's working memory (19 MiB at the default parameters), kept by a
/// thread that hashes one password after another.
///
/// Fresh memory for every hash costs a fifth of the hash: the kernel maps,
/// zeroes and faults in each of its 4,864 pages, then unmaps them. Kept, it
/// is only overwritten: each hash writes every block before reading it.
/// What one hash leaves there is the next one's to overwrite, and
/// [`release`](Self::release) gives the pages back to the kernel; a holder
/// releases it when no more hashes are waiting, so a quiet server holds
/// none.
#[derive(Default)]
pub struct WorkMemory(Vec<Block>);

impl WorkMemory {
    /// Gives the memory back to the system.
    pub fn release(&mut self) {
        self.0 = Vec::new();
    }

    /// Whether memory is held (bytes in use by it, roughly, if so).
    pub fn held(&self) -> usize {
        self.0.len() * Block::SIZE
    }

    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.0.len() < n {
            let mut blocks = Vec::with_capacity(n.max(WORK_MEMORY_FLOOR_BLOCKS));
            blocks.resize(n, Block::default());
            self.0 = blocks;
        }
        &mut self.0[..n]
    }
}

impl std::fmt::Debug for WorkMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkMemory({} bytes)", self.held())
    }
}

/// Runs Argon2 into `out` in `work`'s memory.
fn run(
    argon: &Argon2<'_>,
    work: &mut WorkMemory,
    pwd: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    let blocks = work.blocks(argon.params().block_count());
    argon.hash_password_into_with_memory(pwd, salt, out, blocks)
}

/// Recomputes a PHC hash with its own algorithm, version, parameters and
/// salt, and compares in constant time.
fn verify_phc(work: &mut WorkMemory, pwd: &[u8], phc: &PasswordHash<'_>) -> Option<bool> {
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
    run(&argon, work, pwd, salt, &mut out).ok()?;
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
    fn memory_kept_between_hashes_gives_the_answers_of_fresh_memory() {
        let h = PasswordHasher::new(HashParams::default()).unwrap();
        let bigger = PasswordHasher::new(HashParams {
            memory_kib: 24_000,
            iterations: 3,
            parallelism: 2,
        })
        .unwrap();
        let mut work = WorkMemory::default();
        let small = h.hash_in(&mut work, "first passphrase").unwrap();
        assert_eq!(work.held(), 19_456 * 1024);
        let big = bigger.hash_in(&mut work, "second passphrase").unwrap();
        assert_eq!(
            work.held(),
            24_000 * 1024,
            "grown for the larger parameters"
        );
        // Each checked in memory the other left behind, and in fresh memory.
        for _ in 0..2 {
            assert!(h.verify_in(&mut work, "first passphrase", Some(&small)));
            assert!(!h.verify_in(&mut work, "first passphrasE", Some(&small)));
            assert!(h.verify_in(&mut work, "second passphrase", Some(&big)));
            assert!(!h.verify_in(&mut work, "second passphrasE", Some(&big)));
        }
        assert!(h.verify("first passphrase", Some(&small)));
        assert!(h.verify("second passphrase", Some(&big)));
        work.release();
        assert_eq!(work.held(), 0);
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

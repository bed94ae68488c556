//! Session tokens: 256 random bits, shown to the client once and stored
//! only as a SHA-256 hash, so a database dump holds no usable session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Length of a token as sent on the wire (43 base64url characters).
pub const TOKEN_CHARS: usize = 43;

/// A freshly made token and the hash to store.
pub struct NewToken {
    pub token: Zeroizing<String>,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken { .. }")
    }
}

pub fn new_token() -> Result<NewToken, CryptoError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(raw.as_mut())
        .map_err(|_| CryptoError::Random)?;
    let token = Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_ref()));
    let hash = hash_token(&token);
    Ok(NewToken { token, hash })
}

/// The stored form of a token. Tokens are 256-bit random values, so a plain
/// hash is enough: there is nothing to brute-force.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Cheap shape check before touching the store.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == TOKEN_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Random bytes for other uses (ids, salts).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(*a.token, *b.token);
        assert!(looks_like_token(&a.token));
        assert_eq!(hash_token(&a.token), a.hash);
        assert!(!looks_like_token("short"));
        assert!(!looks_like_token(&"a".repeat(42).replace('a', "!")));
    }
}

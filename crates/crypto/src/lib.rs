//! Key providers and the primitives built on them. Only well-kept crates do
//! the cryptography (argon2, ring); this crate decides how they are used.

pub mod envelope;
pub mod keyfile;
pub mod password;
pub mod pkcs11;
pub mod provider;
pub mod token;
pub mod totp;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key file or directory is unsafe or unusable; the message says the fix.
    #[error("{0}")]
    KeyStore(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A ciphertext or wrapped key failed its integrity check: it was
    /// changed, moved, or belongs to another key.
    #[error("integrity check failed")]
    Tampered,
    #[error("no secure random numbers available")]
    Random,
}

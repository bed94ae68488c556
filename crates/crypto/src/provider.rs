//! Key providers: where the master key (key-encryption key) lives and how
//! other keys are wrapped under it. The master key never reaches the
//! database; only keys wrapped by it do.

use zeroize::Zeroizing;

use crate::CryptoError;

/// The associated data every provider binds a wrapped key to.
pub(crate) fn wrap_aad(context: &str) -> Vec<u8> {
    let mut aad = b"strongroom/wrap/v1\0".to_vec();
    aad.extend_from_slice(context.as_bytes());
    aad
}

pub trait KeyProvider: Send + Sync + 'static {
    /// Where the master key lives, for operators.
    fn describe(&self) -> String;
    /// Identifies the master key that [`KeyProvider::wrap`] uses now.
    fn current_key_id(&self) -> String;
    /// Wraps a secret under the current master key. `context` is bound in:
    /// the wrapped bytes open only with the same context.
    fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, CryptoError>;
    /// Unwraps a secret wrapped by master key `key_id` with `context`.
    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
    /// Master-key rotation, step 1: makes a new current master key, keeping
    /// the old ones usable for unwrapping. Returns the new key's id.
    fn add_master_key(&self) -> Result<String, CryptoError>;
    /// Master-key rotation, last step (after every stored key is re-wrapped):
    /// destroys the old master keys. Returns how many.
    fn drop_old_master_keys(&self) -> Result<usize, CryptoError>;
}

//! Field encryption and blind indexes under a company's keys.
//!
//! A protected value is stored as `sr1:<key version>:<base64url(nonce ‖
//! ciphertext ‖ tag)>`, sealed with AES-256-GCM under the company's data key
//! of that version, with a fresh random 96-bit nonce per encryption. The
//! associated data binds company, record type, record id, field and key
//! version, so a ciphertext moved to another row, field or company fails to
//! open. Keys stay in zeroizing memory; ring's key schedule is built per
//! operation and dropped at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use zeroize::Zeroizing;

use crate::CryptoError;

const PREFIX: &str = "sr1:";

/// Where a value lives; bound into the ciphertext as associated data.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    pub company: &'a str,
    pub record_type: &'a str,
    pub record_id: &'a str,
    pub field: &'a str,
}

impl FieldContext<'_> {
    fn aad(&self, version: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        for part in [
            "strongroom/field/v1",
            self.company,
            self.record_type,
            self.record_id,
            self.field,
        ] {
            out.extend_from_slice(part.as_bytes());
            out.push(0);
        }
        out.extend_from_slice(&version.to_be_bytes());
        out
    }
}

/// A 256-bit symmetric key with its version. Zeroed when dropped.
pub struct SecretKey {
    version: i64,
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(v{}, <redacted>)", self.version)
    }
}

impl SecretKey {
    pub fn from_bytes(version: i64, bytes: &[u8]) -> Result<SecretKey, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(CryptoError::KeyStore(format!(
                "key version {version} has {} bytes, not 32",
                bytes.len()
            )));
        }
        k.copy_from_slice(bytes);
        Ok(SecretKey { version, bytes: k })
    }

    pub fn generate(version: i64) -> Result<SecretKey, CryptoError> {
        let bytes = Zeroizing::new(crate::token::random_bytes::<32>()?);
        Ok(SecretKey { version, bytes })
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(&AES_256_GCM, self.bytes.as_ref())
            .map(LessSafeKey::new)
            .map_err(|_| CryptoError::KeyStore("bad AES key".into()))
    }
}

/// Seals `plaintext` with raw AES-256-GCM: `nonce ‖ ciphertext ‖ tag`.
pub fn seal_raw(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes = crate::token::random_bytes::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce_bytes);
    let mut body = plaintext.to_vec();
    key.aead()?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| CryptoError::Tampered)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens what [`seal_raw`] made. Any change to the bytes, the key or the
/// associated data is [`CryptoError::Tampered`].
pub fn open_raw(
    key: &SecretKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Tampered);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Tampered)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let n = key
        .aead()?
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Tampered)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Encrypts a field value into its stored form.
pub fn encrypt_field(
    key: &SecretKey,
    ctx: FieldContext<'_>,
    plaintext: &str,
) -> Result<String, CryptoError> {
    let sealed = seal_raw(key, &ctx.aad(key.version), plaintext.as_bytes())?;
    Ok(format!(
        "{PREFIX}{}:{}",
        key.version,
        URL_SAFE_NO_PAD.encode(sealed)
    ))
}

/// The key version a stored value was sealed under, or `None` when the
/// value is not in the stored form at all.
pub fn stored_version(stored: &str) -> Option<i64> {
    let rest = stored.strip_prefix(PREFIX)?;
    let (v, _) = rest.split_once(':')?;
    v.parse().ok()
}

/// Decrypts a stored value. `key` must be the version [`stored_version`]
/// names.
pub fn decrypt_field(
    key: &SecretKey,
    ctx: FieldContext<'_>,
    stored: &str,
) -> Result<Zeroizing<String>, CryptoError> {
    let rest = stored.strip_prefix(PREFIX).ok_or(CryptoError::Tampered)?;
    let (v, body) = rest.split_once(':').ok_or(CryptoError::Tampered)?;
    if v.parse::<i64>().ok() != Some(key.version) {
        return Err(CryptoError::Tampered);
    }
    let sealed = URL_SAFE_NO_PAD
        .decode(body.as_bytes())
        .map_err(|_| CryptoError::Tampered)?;
    let plain = open_raw(key, &ctx.aad(key.version), &sealed)?;
    let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Tampered)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Bytes of the HMAC kept in a blind index: 32 bits. The index reveals only
/// which records share a value; truncation means one entry never pins a
/// value (each of the 2^32 buckets stands for many possible national IDs or
/// card numbers), while a lookup still fetches at most a few candidates,
/// which are decrypted and compared exactly.
pub const BLIND_INDEX_BYTES: usize = 4;

/// The blind index of a normalised value: `bi:<hex>`.
pub fn blind_index(
    index_key: &SecretKey,
    record_type: &str,
    field: &str,
    normalised: &str,
) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, index_key.expose());
    let mut ctx = hmac::Context::with_key(&key);
    for part in ["strongroom/bi/v1", record_type, field, normalised] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let tag = ctx.sign();
    format!("bi:{}", hex::encode(&tag.as_ref()[..BLIND_INDEX_BYTES]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(company: &'a str, id: &'a str, field: &'a str) -> FieldContext<'a> {
        FieldContext {
            company,
            record_type: "customer",
            record_id: id,
            field,
        }
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let k = SecretKey::generate(1).unwrap();
        let c = ctx("ACME", "r1", "national_id");
        let a = encrypt_field(&k, c, "079201001234").unwrap();
        let b = encrypt_field(&k, c, "079201001234").unwrap();
        assert_ne!(a, b, "same value must not give the same ciphertext");
        assert!(!a.contains("079201001234"));
        assert_eq!(stored_version(&a), Some(1));
        assert_eq!(decrypt_field(&k, c, &a).unwrap().as_str(), "079201001234");
    }

    #[test]
    fn moved_or_changed_ciphertexts_fail() {
        let k = SecretKey::generate(3).unwrap();
        let c = ctx("ACME", "r1", "national_id");
        let s = encrypt_field(&k, c, "079201001234").unwrap();
        for other in [
            ctx("ACME", "r2", "national_id"),
            ctx("ACME", "r1", "card_number"),
            ctx("BETA", "r1", "national_id"),
        ] {
            assert!(matches!(
                decrypt_field(&k, other, &s),
                Err(CryptoError::Tampered)
            ));
        }
        let other_key = SecretKey::generate(3).unwrap();
        assert!(decrypt_field(&other_key, c, &s).is_err());
        let mut flipped = s.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(decrypt_field(&k, c, std::str::from_utf8(&flipped).unwrap()).is_err());
        // The version is bound too: relabelling the version fails.
        let relabelled = s.replacen("sr1:3:", "sr1:4:", 1);
        let k4 = SecretKey::from_bytes(4, k.expose()).unwrap();
        assert!(decrypt_field(&k4, c, &relabelled).is_err());
        assert!(decrypt_field(&k, c, "plain text").is_err());
    }

    #[test]
    fn blind_indexes_are_keyed_and_short() {
        let k1 = SecretKey::generate(1).unwrap();
        let k2 = SecretKey::generate(1).unwrap();
        let a = blind_index(&k1, "customer", "national_id", "079201001234");
        assert_eq!(
            a,
            blind_index(&k1, "customer", "national_id", "079201001234")
        );
        assert_ne!(
            a,
            blind_index(&k2, "customer", "national_id", "079201001234")
        );
        assert_ne!(
            a,
            blind_index(&k1, "customer", "card_number", "079201001234")
        );
        assert_eq!(a.len(), 3 + 2 * BLIND_INDEX_BYTES);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any value comes back from its own place, and from nowhere else.
        #[test]
        fn round_trip_only_in_place(value in ".{0,200}", id in "[a-f0-9-]{1,36}", other in "[a-f0-9-]{1,36}") {
            let k = SecretKey::generate(1).unwrap();
            let ctx = FieldContext { company: "ACME", record_type: "customer", record_id: &id, field: "national_id" };
            let sealed = encrypt_field(&k, ctx, &value).unwrap();
            let back = decrypt_field(&k, ctx, &sealed).unwrap();
            prop_assert_eq!(back.as_str(), value.as_str());
            if other != id {
                let elsewhere = FieldContext { record_id: &other, ..ctx };
                prop_assert!(decrypt_field(&k, elsewhere, &sealed).is_err());
            }
        }
    }
}

//! Second factors: TOTP (RFC 6238) through `totp-rs`, its enrolment QR code
//! through `qrcodegen`, and single-use recovery codes kept as keyed hashes.

use ring::hmac;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

use crate::envelope::SecretKey;
use crate::token::random_bytes;
use crate::CryptoError;

/// Seconds per time step, digits per code: what common authenticator apps
/// expect (SHA-1, 6 digits, 30 s).
pub const STEP_SECS: u64 = 30;
pub const DIGITS: usize = 6;
/// Steps either side of now that are accepted (clock drift).
pub const SKEW_STEPS: i64 = 1;
/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;

/// A new 160-bit TOTP secret (the RFC 4226 recommended length).
pub fn new_secret() -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    Ok(Zeroizing::new(random_bytes::<20>()?.to_vec()))
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<TOTP, CryptoError> {
    // totp-rs refuses ':' in the issuer and account (it separates them in
    // the label), so it is replaced.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret.to_vec(),
        Some(issuer.replace(':', "_")),
        account.replace(':', "_"),
    )
    .map_err(|e| CryptoError::KeyStore(format!("TOTP setup failed: {e}")))
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret: &[u8], issuer: &str, account: &str) -> Result<String, CryptoError> {
    Ok(totp(secret, issuer, account)?.get_url())
}

/// The secret in base32, for typing into an app by hand.
pub fn secret_base32(secret: &[u8]) -> String {
    base32_encode(secret)
}

/// Which time step `code` belongs to, within ±[`SKEW_STEPS`] of `unix_secs`.
/// Compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, unix_secs: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) || unix_secs < 0 {
        return None;
    }
    let t = totp(secret, "x", "x").ok()?;
    let now_step = unix_secs / STEP_SECS as i64;
    let mut found = None;
    for step in (now_step - SKEW_STEPS)..=(now_step + SKEW_STEPS) {
        if step < 0 {
            continue;
        }
        let expected = t.generate(step as u64 * STEP_SECS);
        // Equal lengths (both DIGITS); no early exit on the first difference.
        let diff = expected
            .bytes()
            .zip(code.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        if diff == 0 && expected.len() == code.len() {
            found = Some(step);
        }
    }
    found
}

/// The code for a time (tests and software authenticators).
pub fn code_at(secret: &[u8], unix_secs: i64) -> Result<String, CryptoError> {
    Ok(totp(secret, "x", "x")?.generate(unix_secs.max(0) as u64))
}

/// A QR code of `text` as a standalone SVG document.
pub fn qr_svg(text: &str) -> Result<String, CryptoError> {
    use qrcodegen::{QrCode, QrCodeEcc};
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium)
        .map_err(|_| CryptoError::KeyStore("the enrolment URI is too long for a QR code".into()))?;
    let border = 4;
    let size = qr.size();
    let dim = size + border * 2;
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + border, y + border));
            }
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {dim} {dim}\" shape-rendering=\"crispEdges\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes base32 (RFC 4648, no padding), as authenticator apps take a
/// secret typed in by hand.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// New recovery codes: `xxxx-xxxx-xxxx`, 60 random bits each.
pub fn new_recovery_codes() -> Result<Vec<Zeroizing<String>>, CryptoError> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let raw = Zeroizing::new(random_bytes::<8>()?);
            let s = base32_encode(&raw[..]);
            let s = &s[..12];
            Ok(Zeroizing::new(format!(
                "{}-{}-{}",
                &s[..4],
                &s[4..8],
                &s[8..12]
            )))
        })
        .collect()
}

/// The stored form of a recovery code: HMAC-SHA-256 under the company's
/// index key, so a database dump alone cannot be searched for codes. Case,
/// spaces and dashes typed by the user do not matter.
pub fn recovery_code_hash(index_key: &SecretKey, user_ref: &str, code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, index_key.expose());
    let mut ctx = hmac::Context::with_key(&key);
    for part in ["strongroom/recovery/v1", user_ref, &norm] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890": at
        // T = 59 s the 8-digit code is 94287082, so the 6-digit one is 287082.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59).unwrap_or_default(), "287082");
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
        // One step either side is accepted, two are not.
        assert_eq!(matching_step(secret, "287082", 59 + 30), Some(1));
        assert_eq!(matching_step(secret, "287082", 59 + 60), None);
        assert_eq!(matching_step(secret, "28708", 59), None);
        assert_eq!(matching_step(secret, "28708a", 59), None);
    }

    #[test]
    fn uri_and_qr() {
        let secret = b"12345678901234567890";
        let uri = otpauth_uri(secret, "Strongroom ACME", "ann").unwrap_or_default();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains(&format!("secret={}", secret_base32(secret))));
        assert_eq!(secret_base32(secret), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap_or_default(),
            secret.to_vec()
        );
        assert_eq!(base32_decode("1"), None);
        let svg = qr_svg(&uri).unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.contains("<path d=\"M"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_forgivingly() {
        let codes = new_recovery_codes().unwrap_or_default();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let set: std::collections::HashSet<_> = codes.iter().map(|c| c.as_str()).collect();
        assert_eq!(set.len(), RECOVERY_CODES);
        let key = SecretKey::from_bytes(1, &[7u8; 32]).unwrap_or_else(|_| unreachable!());
        let c = codes[0].as_str();
        let h = recovery_code_hash(&key, "u1", c);
        assert_eq!(
            h,
            recovery_code_hash(&key, "u1", &c.to_lowercase().replace('-', " "))
        );
        assert_ne!(h, recovery_code_hash(&key, "u2", c));
    }
}

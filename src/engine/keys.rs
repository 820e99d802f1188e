//! Secrets: data import keys, workspace API keys and the admin token. A secret is 32 random
//! bytes from the operating system's generator, shown once as hex; only
//! its SHA-256 digest is stored, and digests are compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `N` random bytes from the OS generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `n` random bytes from the OS generator, as lower-case hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parses lower- or upper-case hex into exactly 32 bytes.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let v = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = v(pair[0])? << 4 | v(pair[1])?;
    }
    Some(out)
}

/// The SHA-256 digest of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether two digests are equal, in time independent of where they differ.
pub(crate) fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Whether two strings are equal, in time independent of where they differ
/// (their lengths may leak; partner_api_keys are fixed-format).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    same_digest(&digest(a), &digest(b))
}

/// A new data import key.
pub(crate) fn new_data_import_key() -> String {
    format!("dik_{}", random_hex(32))
}

/// A new key id (not secret).
pub(crate) fn new_key_id() -> String {
    format!("key_{}", random_hex(8))
}

/// A new workspace API key.
pub(crate) fn new_api_key() -> String {
    format!("sqk_{}", random_hex(32))
}

/// A new workspace API key id (not secret).
pub(crate) fn new_api_key_id() -> String {
    format!("ak_{}", random_hex(8))
}

/// A new admin token.
pub(crate) fn new_admin_token() -> String {
    format!("adm_{}", random_hex(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = digest("x");
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32("zz"), None);
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = new_data_import_key();
        let b = new_data_import_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
    }
}

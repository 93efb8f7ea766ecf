//! Join tokens: `PIER1.<sha256 of the CA certificate>.<secret>`.
//!
//! A joining node fetches the CA certificate without trusting it, hashes it, and compares the
//! hash with the token's before it sends the secret: a man in the middle would have to present
//! the real CA and then could not complete the TLS handshake with it. The bootstrap token made
//! before any CA exists (`pier token generate`, shared by servers started together) has an
//! empty hash: `PIER1..<secret>`; there the secret itself authenticates both sides.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::SecurityError;

const PREFIX: &str = "PIER1";
/// Bytes of randomness in a generated secret.
const SECRET_BYTES: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the CA certificate (DER); None in a bootstrap token.
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}",
            self.ca_hash.as_deref().unwrap_or(""),
            self.secret
        )
    }
}

/// A new random secret: URL-safe, no dots.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of a secret, hex: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl JoinToken {
    pub fn new(ca_hash: Option<String>, secret: String) -> JoinToken {
        JoinToken { ca_hash, secret }
    }

    pub fn parse(text: &str) -> Result<JoinToken, SecurityError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '.');
        let (prefix, hash, secret) = (parts.next(), parts.next(), parts.next());
        let (Some(PREFIX), Some(hash), Some(secret)) = (prefix, hash, secret) else {
            return Err(SecurityError::Token(format!(
                "expected {PREFIX}.<CA hash>.<secret> (as `pier server` printed it, or `pier token create` made it)"
            )));
        };
        if !hash.is_empty() && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(SecurityError::Token(
                "the CA hash must be 64 hex digits (SHA-256)".into(),
            ));
        }
        if secret.len() < 16
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SecurityError::Token(
                "the secret must be at least 16 letters and digits".into(),
            ));
        }
        Ok(JoinToken {
            ca_hash: (!hash.is_empty()).then(|| hash.to_ascii_lowercase()),
            secret: secret.to_string(),
        })
    }

    /// Whether `ca_fingerprint` is the CA this token trusts (a bootstrap token trusts none).
    pub fn pins(&self, ca_fingerprint: &str) -> bool {
        self.ca_hash
            .as_deref()
            .is_some_and(|h| constant_time_eq(h, &ca_fingerprint.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_pin_their_ca() {
        let hash = "ab".repeat(32);
        let t = JoinToken::new(Some(hash.clone()), generate_secret());
        let parsed = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert!(parsed.pins(&hash));
        assert!(!parsed.pins(&"cd".repeat(32)));
        let boot = JoinToken::parse(&format!("PIER1..{}", generate_secret())).unwrap();
        assert_eq!(boot.ca_hash, None);
        assert!(!boot.pins(&hash));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "K10abc::x",
            "PIER1.abc.0123456789abcdef0",
            "PIER1..short",
            "PIER2..0123456789abcdef0123",
            "PIER1..has space in secret!!",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}

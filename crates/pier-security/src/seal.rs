//! AES-256-GCM sealing with keys derived from a secret (HKDF-SHA256), for data the store keeps
//! but must not give away by itself: the CA key (sealed with the server join secret, as k3s
//! does), the cluster key, service secrets. A copy of the store without the secret reveals
//! nothing; tampering is detected (GCM tag) and the `context` binds a sealed value to what it
//! is (a sealed CA key cannot be passed off as a secret's value).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

use crate::SecurityError;

const VERSION: &str = "v1";
const SALT: &[u8] = b"pier/seal/v1";
const NONCE_BYTES: usize = 12;

/// A 256-bit key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key for `purpose` derived from `secret` (e.g. the server join secret).
    pub fn derive(secret: &str, purpose: &str) -> SealKey {
        let hk = Hkdf::<Sha256>::new(Some(SALT), secret.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        if hk.expand(purpose.as_bytes(), &mut key).is_err() {
            unreachable!("HKDF-SHA256 can expand to 32 bytes");
        }
        SealKey(key)
    }

    pub fn random() -> SealKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SealKey(key)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<SealKey, SecurityError> {
        let bytes = hex::decode(text.trim()).map_err(|e| SecurityError::Seal(e.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecurityError::Seal("a key is 32 bytes".into()))?;
        Ok(SealKey(key))
    }

    /// `v1.<base64(nonce || ciphertext+tag)>`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let cipher = Aes256Gcm::new(&self.0.into());
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and nonce only fails for inputs beyond 64 GiB.
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!(
            "{VERSION}.{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SecurityError> {
        let body = sealed
            .strip_prefix(VERSION)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| SecurityError::Seal("unknown format".into()))?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|e| SecurityError::Seal(e.to_string()))?;
        if raw.len() < NONCE_BYTES + 16 {
            return Err(SecurityError::Seal("too short".into()));
        }
        let (nonce, ct) = raw.split_at(NONCE_BYTES);
        let cipher = Aes256Gcm::new(&self.0.into());
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| {
                SecurityError::Seal(
                    "wrong key or context, or the data was changed (is the join secret right?)"
                        .into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_context() {
        let key = SealKey::derive("server-secret", "ca-key");
        let sealed = key.seal(b"the CA key", "ca");
        assert_eq!(key.open(&sealed, "ca").unwrap(), b"the CA key");
        assert!(key.open(&sealed, "secret").is_err());
        assert!(SealKey::derive("other", "ca-key")
            .open(&sealed, "ca")
            .is_err());
        assert!(SealKey::derive("server-secret", "x")
            .open(&sealed, "ca")
            .is_err());
        // Same input, different nonces.
        assert_ne!(sealed, key.seal(b"the CA key", "ca"));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open(&tampered, "ca").is_err());
        let k = SealKey::random();
        assert_eq!(SealKey::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(format!("{k:?}"), "SealKey(..)");
    }
}

//! The self-signed certificate that answers an ACME TLS-ALPN-01 challenge (RFC 8737): it names
//! exactly the host being validated and carries, in the critical `acmeIdentifier` extension
//! (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31), the SHA-256 of the challenge's key
//! authorization. The CA's validator connects with ALPN `acme-tls/1` and SNI the host, and
//! checks only those two things, so the key is throwaway and nobody needs to trust the
//! certificate.

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use sha2::{Digest, Sha256};

use crate::SecurityError;

/// The validation certificate for `host` and `key_authorization` (`token.thumbprint`):
/// (certificate PEM, key PEM).
pub fn tls_alpn_01_cert(
    host: &str,
    key_authorization: &str,
) -> Result<(String, String), SecurityError> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host);
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn carries_the_digest_in_a_critical_acme_identifier_and_names_only_the_host() {
        let (pem, key) = tls_alpn_01_cert("shop.example.com", "tok.thumb").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName("shop.example.com")]
        );
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier present");
        assert!(ext.critical);
        // DER OCTET STRING of 32 bytes: 0x04 0x20, then the digest.
        let digest = Sha256::digest(b"tok.thumb");
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], digest.as_slice());
    }
}

//! The local CA of `pier dev`: a self-signed root made on first start, and leaf certificates
//! it issues on demand for `localhost` names, as Caddy's internal issuer does, so
//! `https://web.localhost:8443` works once the root is trusted. The root is name-constrained
//! to `localhost` so trusting it cannot vouch for any real site.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use time::OffsetDateTime;

use crate::SecurityError;

/// The root lives this long (it is regenerated only by deleting its files).
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are issued per process start and cached in memory, so a short life is fine.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clocks of clients may lag.
const BACKDATE: Duration = Duration::from_secs(3600);

fn at(unix: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Whether `host` is a name the local CA issues for.
pub fn is_local_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

pub struct LocalCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// A new root, valid from (a little before) `now_unix`.
    pub fn generate(now_unix: u64) -> Result<LocalCa, SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pier dev local CA");
        dn.push(DnType::OrganizationName, "pier");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("localhost".into())],
            excluded_subtrees: vec![],
        });
        params.not_before = at(now_unix.saturating_sub(BACKDATE.as_secs()));
        params.not_after = at(now_unix.saturating_add(ROOT_VALIDITY.as_secs()));
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Self::from_pem(&cert.pem(), &key_pem)
    }

    /// The root from its files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LocalCa, SecurityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(LocalCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A leaf for `host`: (chain PEM with the root, key PEM).
    pub fn issue(&self, host: &str, now_unix: u64) -> Result<(String, String), SecurityError> {
        if !is_local_name(host) {
            return Err(SecurityError::Certificate(format!(
                "the local CA issues only for localhost names, not {host}"
            )));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(now_unix.saturating_sub(BACKDATE.as_secs()));
        params.not_after = at(now_unix.saturating_add(LEAF_VALIDITY.as_secs()));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_only_localhost_names_and_reloads() {
        let ca = LocalCa::generate(1_800_000_000).unwrap();
        let (chain, key) = ca.issue("web.localhost", 1_800_000_000).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(key.contains("PRIVATE KEY"));
        assert!(ca.issue("example.com", 1_800_000_000).is_err());
        let again = LocalCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert!(again.issue("localhost", 1_800_000_000).is_ok());
    }
}

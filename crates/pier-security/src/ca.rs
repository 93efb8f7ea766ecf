//! The cluster certificate authority and the certificates it signs.
//!
//! Every pier process (server, agent, gateway) holds a key it made itself and a certificate
//! the CA signed from its CSR. The CA decides what goes into the certificate — the CSR's own
//! claims are ignored — so a node cannot name itself anything but what its join was granted.
//! The identity is one URI SAN, `spiffe://pier.cluster/<role>/<name>`, read back on every
//! connection by [`identity_of_der`].

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::SecurityError;

/// The trust domain in every node identity URI.
pub const TRUST_DOMAIN: &str = "pier.cluster";
/// Lifetime of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of node certificates; renewed well before (see [`renew_after`]).
pub const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Clocks of different machines differ a little: certificates start this much in the past.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What a node is to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A member of the replicated store: may call raft RPCs and sign certificates.
    Server,
    /// A node agent: registers its node, runs its tasks, reports their status.
    Agent,
    /// A standalone gateway: reads the catalog.
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "server" => Some(Role::Server),
            "agent" => Some(Role::Agent),
            "gateway" => Some(Role::Gateway),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    pub role: Role,
    pub name: String,
}

impl NodeIdentity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<NodeIdentity, SecurityError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(SecurityError::Certificate(format!(
                "node name {name:?} must be 1-128 characters of letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(NodeIdentity { role, name })
    }

    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Option<NodeIdentity> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
        let mut parts = rest.strip_prefix('/')?.splitn(2, '/');
        let role = Role::parse(parts.next()?)?;
        NodeIdentity::new(role, parts.next()?).ok()
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

fn to_offset(unix_secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The cluster CA: its certificate (public, in every trust store) and its key (only servers).
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &fingerprint_pem(&self.cert_pem).ok())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA, valid from (a little before) `now_unix` for [`CA_VALIDITY`].
    pub fn generate(now_unix: u64) -> Result<ClusterCa, SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pier cluster CA");
        dn.push(DnType::OrganizationName, "pier");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now_unix.saturating_sub(BACKDATE.as_secs()));
        params.not_after = to_offset(now_unix.saturating_add(CA_VALIDITY.as_secs()));
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from its PEM files; checks that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, SecurityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = first_cert_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| SecurityError::Certificate(format!("CA certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SecurityError::Certificate(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_pem(&self.cert_pem).unwrap_or_default()
    }

    /// Signs a certificate for `who` from `csr_pem`. Only the CSR's public key is used; the
    /// names come from `who` and `addresses` (IPs and DNS names the node is reached at).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        who: &NodeIdentity,
        addresses: &[String],
        validity: Duration,
        now_unix: u64,
    ) -> Result<String, SecurityError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = node_params(who, addresses, validity, now_unix)?;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }

    /// Key and certificate for `who` made here (for the server that holds the CA itself).
    pub fn issue(
        &self,
        who: &NodeIdentity,
        addresses: &[String],
        validity: Duration,
        now_unix: u64,
    ) -> Result<NodeCert, SecurityError> {
        let (key_pem, csr_pem) = new_key_and_csr(who)?;
        let cert_pem = self.sign_csr(&csr_pem, who, addresses, validity, now_unix)?;
        Ok(NodeCert { cert_pem, key_pem })
    }
}

/// A node's certificate and the key it was made for.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("identity", &identity_of_pem(&self.cert_pem).ok())
            .finish_non_exhaustive()
    }
}

fn node_params(
    who: &NodeIdentity,
    addresses: &[String],
    validity: Duration,
    now_unix: u64,
) -> Result<CertificateParams, SecurityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{}.{}", who.name, who.role));
    dn.push(DnType::OrganizationName, "pier");
    params.distinguished_name = dn;
    let mut sans =
        vec![SanType::URI(who.uri().try_into().map_err(|e| {
            SecurityError::Certificate(format!("identity URI: {e:?}"))
        })?)];
    // `<role>.pier.cluster` lets a client check the role by name; the node's own name too.
    for dns in [format!("{}.{TRUST_DOMAIN}", who.role), who.name.clone()] {
        if let Ok(name) = dns.try_into() {
            sans.push(SanType::DnsName(name));
        }
    }
    for a in addresses {
        match a.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                sans.push(SanType::DnsName(a.clone().try_into().map_err(|e| {
                    SecurityError::Certificate(format!("address {a:?}: {e:?}"))
                })?))
            }
        }
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // Backdated for clock differences, but never by more than a tenth of the lifetime: the
    // renewal point (two thirds of not_before..not_after) must lie in the future.
    let backdate = BACKDATE.as_secs().min(validity.as_secs() / 10);
    params.not_before = to_offset(now_unix.saturating_sub(backdate));
    params.not_after = to_offset(now_unix.saturating_add(validity.as_secs()));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A fresh key pair and a CSR for `who` (the key never leaves the node).
pub fn new_key_and_csr(who: &NodeIdentity) -> Result<(String, String), SecurityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{}.{}", who.name, who.role));
    let csr = params.serialize_request(&key)?;
    let csr_pem = csr
        .pem()
        .map_err(|e| SecurityError::Certificate(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, SecurityError> {
    let mut reader = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(SecurityError::Certificate(format!("bad PEM: {e}"))),
        None => Err(SecurityError::Certificate("no certificate in PEM".into())),
    }
}

/// SHA-256 of a certificate's DER, lower-case hex.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, SecurityError> {
    Ok(hex::encode(Sha256::digest(first_cert_der(cert_pem)?)))
}

/// SHA-256 (hex) of every certificate in a PEM bundle, in order: during a CA rotation a
/// bundle holds the signing CA first and the one being retired after it.
pub fn fingerprints_pem(bundle_pem: &str) -> Vec<String> {
    let mut reader = bundle_pem.as_bytes();
    rustls_pemfile::certs(&mut reader)
        .filter_map(Result::ok)
        .map(|der| hex::encode(Sha256::digest(&der)))
        .collect()
}

/// Whether the first certificate of `cert_pem` carries a signature made with the key of the
/// first certificate of `ca_pem`. Every CA of a cluster has the same name, so the issuer
/// name cannot tell a rotated CA from the one before it; the signature can.
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(cert_der), Ok(ca_der)) = (first_cert_der(cert_pem), first_cert_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&cert_der),
        x509_parser::parse_x509_certificate(&ca_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The node identity in a certificate (DER), if it carries one.
pub fn identity_of_der(cert_der: &[u8]) -> Option<NodeIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => NodeIdentity::from_uri(uri),
        _ => None,
    })
}

pub fn identity_of_pem(cert_pem: &str) -> Result<NodeIdentity, SecurityError> {
    identity_of_der(&first_cert_der(cert_pem)?).ok_or_else(|| {
        SecurityError::Certificate("the certificate carries no pier identity".into())
    })
}

/// Expiry of a certificate, unix seconds.
pub fn not_after_unix(cert_pem: &str) -> Result<u64, SecurityError> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| SecurityError::Certificate(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp().max(0) as u64)
}

/// When a certificate should be renewed: once two thirds of its lifetime have passed.
pub fn renew_after(cert_pem: &str) -> Result<u64, SecurityError> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| SecurityError::Certificate(e.to_string()))?;
    let from = cert.validity().not_before.timestamp().max(0) as u64;
    let to = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(from + to.saturating_sub(from) * 2 / 3)
}

/// SHA-256 (hex) of the public key in a CSR: what a node name is bound to at its first join.
pub fn csr_key_fingerprint(csr_pem: &str) -> Result<String, SecurityError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| SecurityError::Certificate(format!("CSR PEM: {e}")))?;
    use x509_parser::prelude::FromDer;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| SecurityError::Certificate(format!("CSR: {e}")))?;
    // The signature proves the requester holds the key it asks a certificate for.
    csr.verify_signature()
        .map_err(|e| SecurityError::Certificate(format!("CSR signature: {e}")))?;
    Ok(hex::encode(Sha256::digest(
        csr.certification_request_info.subject_pki.raw,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn identities_round_trip_and_bad_names_are_refused() {
        let id = NodeIdentity::new(Role::Agent, "node-1.eu").unwrap();
        assert_eq!(id.uri(), "spiffe://pier.cluster/agent/node-1.eu");
        assert_eq!(NodeIdentity::from_uri(&id.uri()), Some(id));
        assert!(NodeIdentity::new(Role::Agent, "a/b").is_err());
        assert!(NodeIdentity::new(Role::Agent, "").is_err());
        assert_eq!(NodeIdentity::from_uri("spiffe://other/agent/x"), None);
        assert_eq!(NodeIdentity::from_uri("spiffe://pier.cluster/king/x"), None);
    }

    #[test]
    fn the_ca_signs_what_it_decides_not_what_the_csr_claims() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let who = NodeIdentity::new(Role::Agent, "n1").unwrap();
        // A CSR that claims to be a server: the certificate still says agent n1.
        let liar = NodeIdentity::new(Role::Server, "s1").unwrap();
        let (_key, csr) = new_key_and_csr(&liar).unwrap();
        let cert = ca
            .sign_csr(&csr, &who, &["10.0.0.7".into()], NODE_VALIDITY, NOW)
            .unwrap();
        let fp = csr_key_fingerprint(&csr).unwrap();
        assert_eq!(fp.len(), 64);
        let (_, other_csr) = new_key_and_csr(&who).unwrap();
        assert_ne!(csr_key_fingerprint(&other_csr).unwrap(), fp);
        assert!(csr_key_fingerprint("not a csr").is_err());
        assert_eq!(identity_of_pem(&cert).unwrap(), who);
        let expires = not_after_unix(&cert).unwrap();
        assert_eq!(expires, NOW + NODE_VALIDITY.as_secs());
        let renew = renew_after(&cert).unwrap();
        assert!(renew > NOW && renew < expires);
        // Short lifetimes too renew in the future, not at once.
        let short = ca
            .sign_csr(&csr, &who, &[], Duration::from_secs(15), NOW)
            .unwrap();
        let renew = renew_after(&short).unwrap();
        assert!(renew > NOW && renew < NOW + 15, "{renew}");
    }

    #[test]
    fn issued_by_tells_two_cas_of_the_same_name_apart() {
        let old = ClusterCa::generate(NOW).unwrap();
        let new = ClusterCa::generate(NOW).unwrap();
        let who = NodeIdentity::new(Role::Server, "s1").unwrap();
        let cert = old.issue(&who, &[], NODE_VALIDITY, NOW).unwrap().cert_pem;
        assert!(issued_by(&cert, old.cert_pem()));
        assert!(!issued_by(&cert, new.cert_pem()));
        assert!(!issued_by("garbage", old.cert_pem()));
        let bundle = format!("{}{}", new.cert_pem(), old.cert_pem());
        assert_eq!(
            fingerprints_pem(&bundle),
            vec![new.fingerprint(), old.fingerprint()]
        );
        // The first certificate of a bundle is the one that counts.
        assert!(!issued_by(&cert, &bundle));
    }

    #[test]
    fn a_ca_key_from_elsewhere_is_refused_and_fingerprints_differ() {
        let a = ClusterCa::generate(NOW).unwrap();
        let b = ClusterCa::generate(NOW).unwrap();
        assert!(ClusterCa::from_pem(a.cert_pem(), b.key_pem()).is_err());
        let again = ClusterCa::from_pem(a.cert_pem(), a.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), a.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}

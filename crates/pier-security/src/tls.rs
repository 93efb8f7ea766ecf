//! rustls configurations: mTLS between pier processes (both sides present a certificate from
//! the cluster CA), HTTPS listeners that accept clients with or without a certificate, and
//! the one deliberately unverified client used to download a CA whose hash a join token pins.
//!
//! The crypto provider is aws-lc-rs, passed explicitly (no process-wide default to install).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::ca::{identity_of_der, NodeIdentity};
use crate::SecurityError;

/// Whether a listener asks its clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client must present a certificate from the cluster CA (raft, cluster port).
    Required,
    /// Clients may present one (agents) or authenticate otherwise (tokens: CLI, browsers).
    Optional,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> SecurityError {
    SecurityError::Tls(e.to_string())
}

/// Every certificate in the PEM texts (a bundle may hold several CAs during a rotation).
pub fn certs_from_pem(pems: &[&str]) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let mut out = Vec::new();
    for pem in pems {
        let mut reader = pem.as_bytes();
        for cert in rustls_pemfile::certs(&mut reader) {
            out.push(cert.map_err(tls_err)?);
        }
    }
    if out.is_empty() {
        return Err(SecurityError::Tls("no certificate in PEM".into()));
    }
    Ok(out)
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let mut reader = pem.as_bytes();
    rustls_pemfile::private_key(&mut reader)
        .map_err(tls_err)?
        .ok_or_else(|| SecurityError::Tls("no private key in PEM".into()))
}

/// The trust store: every CA certificate in `ca_pems`.
pub fn roots(ca_pems: &[&str]) -> Result<RootCertStore, SecurityError> {
    let mut store = RootCertStore::empty();
    for cert in certs_from_pem(ca_pems)? {
        store.add(cert).map_err(tls_err)?;
    }
    Ok(store)
}

/// A listener presenting `cert_pem` (chain) with `key_pem`.
pub fn server_config(
    ca_pems: &[&str],
    cert_pem: &str,
    key_pem: &str,
    client_certs: ClientCerts,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, SecurityError> {
    let roots = Arc::new(roots(ca_pems)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = match client_certs {
        ClientCerts::Required => verifier.build(),
        ClientCerts::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(tls_err)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(&[cert_pem])?, key_from_pem(key_pem)?)
        .map_err(tls_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client that trusts only the cluster CA(s) and, with `identity`, presents its own
/// certificate.
pub fn client_config(
    ca_pems: &[&str],
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, SecurityError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots(ca_pems)?);
    match identity {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(certs_from_pem(&[cert_pem])?, key_from_pem(key_pem)?)
            .map_err(tls_err),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The identity of a connection's client, from the certificate it presented (already
/// verified against the CA by the handshake).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<NodeIdentity> {
    certs?.first().and_then(|c| identity_of_der(c))
}

/// Accepts any server certificate. Only for downloading a CA certificate whose SHA-256 a join
/// token pins: the caller compares the hash before trusting or sending anything.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// See [`AcceptAnyServer`]: for fetching the CA certificate a join token pins, nothing else.
pub fn ca_download_config() -> Result<ClientConfig, SecurityError> {
    let p = provider();
    Ok(ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(p)))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{ClusterCa, NodeIdentity, Role, NODE_VALIDITY};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
    ) -> Result<Option<NodeIdentity>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let who = peer_identity(tls.get_ref().1.peer_certificates());
                    let mut b = [0u8; 4];
                    let _ = tls.read_exact(&mut b).await;
                    let _ = tls.write_all(b"pong").await;
                    Ok(who)
                }
                Err(e) => Err(e.to_string()),
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let client_side = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let client_res = client_side.await;
        let server_res = srv.await.unwrap();
        client_res?;
        server_res
    }

    #[tokio::test]
    async fn mtls_names_the_client_and_refuses_strangers() {
        let t = now();
        let ca = ClusterCa::generate(t).unwrap();
        let server_id = NodeIdentity::new(Role::Server, "s1").unwrap();
        let agent_id = NodeIdentity::new(Role::Agent, "n1").unwrap();
        let server = ca
            .issue(&server_id, &["127.0.0.1".into()], NODE_VALIDITY, t)
            .unwrap();
        let agent = ca.issue(&agent_id, &[], NODE_VALIDITY, t).unwrap();
        let required = server_config(
            &[ca.cert_pem()],
            &server.cert_pem,
            &server.key_pem,
            ClientCerts::Required,
            &[],
        )
        .unwrap();

        // A client of the cluster: the server learns who it is.
        let ok = client_config(&[ca.cert_pem()], Some((&agent.cert_pem, &agent.key_pem))).unwrap();
        assert_eq!(handshake(required.clone(), ok).await, Ok(Some(agent_id)));

        // No certificate: refused where one is required.
        let anonymous = client_config(&[ca.cert_pem()], None).unwrap();
        assert!(handshake(required.clone(), anonymous).await.is_err());

        // A certificate from another CA: refused.
        let other = ClusterCa::generate(t).unwrap();
        let stranger = other
            .issue(
                &NodeIdentity::new(Role::Server, "s9").unwrap(),
                &[],
                NODE_VALIDITY,
                t,
            )
            .unwrap();
        let forged = client_config(
            &[ca.cert_pem()],
            Some((&stranger.cert_pem, &stranger.key_pem)),
        )
        .unwrap();
        assert!(handshake(required.clone(), forged).await.is_err());

        // A client that trusts another CA does not accept this server.
        let wrong_trust = client_config(&[other.cert_pem()], None).unwrap();
        let optional = server_config(
            &[ca.cert_pem()],
            &server.cert_pem,
            &server.key_pem,
            ClientCerts::Optional,
            &[],
        )
        .unwrap();
        assert!(handshake(optional.clone(), wrong_trust).await.is_err());
        // Optional client certificates: an anonymous client gets through, unnamed.
        let anonymous = client_config(&[ca.cert_pem()], None).unwrap();
        assert_eq!(handshake(optional.clone(), anonymous).await, Ok(None));
        // The CA download client accepts the server whatever it presents.
        assert_eq!(
            handshake(optional, ca_download_config().unwrap()).await,
            Ok(None)
        );
    }
}

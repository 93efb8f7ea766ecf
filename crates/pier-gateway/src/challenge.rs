//! Pending ACME challenges this gateway answers, filled from the replicated store by the
//! binary, so every gateway answers a challenge that one server's ACME manager started,
//! whichever gateway the CA's validator reaches:
//!
//! * HTTP-01: `GET /.well-known/acme-challenge/TOKEN` over plain HTTP is answered with the
//!   token's key authorization.
//! * TLS-ALPN-01 (RFC 8737): a TLS handshake on the HTTPS listener that offers only the ALPN
//!   protocol `acme-tls/1` for a host with a pending challenge gets that host's validation
//!   certificate, and the connection is closed once the handshake is done.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Token → key authorization, and host → validation certificate, each swapped whole.
#[derive(Default)]
pub struct AcmeChallenges {
    answers: ArcSwap<HashMap<String, String>>,
    tls_alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for AcmeChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeChallenges")
            .field("http_01", &self.answers.load().len())
            .field(
                "tls_alpn_01",
                &self.tls_alpn.load().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AcmeChallenges {
    pub fn new() -> Arc<AcmeChallenges> {
        Arc::new(AcmeChallenges::default())
    }

    /// Replaces every HTTP-01 answer at once.
    pub fn replace(&self, answers: HashMap<String, String>) {
        self.answers.store(Arc::new(answers));
    }

    /// Replaces every TLS-ALPN-01 validation certificate at once; host names in lower case.
    pub fn replace_tls_alpn(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        self.tls_alpn.store(Arc::new(certs));
    }

    /// The key authorization for `token`, if a challenge for it is pending.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.answers.load().get(token).cloned()
    }

    /// Whether no HTTP-01 challenge is pending.
    pub fn is_empty(&self) -> bool {
        self.answers.load().is_empty()
    }

    /// The validation certificate for `host`, if a TLS-ALPN-01 challenge for it is pending.
    pub fn tls_alpn_cert(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn.load().get(&host).cloned()
    }
}

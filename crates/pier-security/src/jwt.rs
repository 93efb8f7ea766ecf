//! Registry bearer tokens, as the Docker token auth spec has them: a JWT (HS256, signed with a
//! key only servers hold) whose `access` claim lists what the bearer may do to which
//! repository, valid for a few minutes. `docker login` / `skopeo --creds` exchange Basic
//! credentials (a pier API token as the password) for one at the token endpoint.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::SecurityError;

const ISSUER: &str = "pier";

/// One grant of the `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryClaims {
    pub iss: String,
    /// Who: the API token's accessor, or `node:<name>` for an agent.
    pub sub: String,
    /// The registry service name (the `service` of the challenge).
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<AccessEntry>,
}

impl RegistryClaims {
    /// Whether the token lets its bearer do `action` ("pull", "push", "delete") to `repo`.
    pub fn permits(&self, repo: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && (a.name == repo || a.name == "*")
                && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

/// Signs a registry token for `subject` with `access`, valid `ttl_secs` from `now_unix`.
pub fn issue(
    key: &[u8],
    service: &str,
    subject: &str,
    access: Vec<AccessEntry>,
    ttl_secs: u64,
    now_unix: u64,
) -> Result<String, SecurityError> {
    let claims = RegistryClaims {
        iss: ISSUER.into(),
        sub: subject.into(),
        aud: service.into(),
        exp: now_unix + ttl_secs,
        // A little slack for clocks of other servers verifying it.
        nbf: now_unix.saturating_sub(30),
        iat: now_unix,
        jti: uuid::Uuid::new_v4().to_string(),
        access,
    };
    let key = EncodingKey::from_secret(key).map_err(|e| SecurityError::Jwt(e.to_string()))?;
    encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| SecurityError::Jwt(e.to_string()))
}

/// Checks signature, issuer, audience and time window (`now_unix`, 30 s leeway).
pub fn verify(
    key: &[u8],
    service: &str,
    token: &str,
    now_unix: u64,
) -> Result<RegistryClaims, SecurityError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[service]);
    v.set_issuer(&[ISSUER]);
    // Time is checked below against the caller's clock, not the library's.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
    let key = DecodingKey::from_secret(key).map_err(|e| SecurityError::Jwt(e.to_string()))?;
    let data =
        decode::<RegistryClaims>(token, &key, &v).map_err(|e| SecurityError::Jwt(e.to_string()))?;
    let c = data.claims;
    if now_unix > c.exp + 30 || now_unix + 30 < c.nbf {
        return Err(SecurityError::Jwt("expired or not yet valid".into()));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_push(repo: &str) -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: repo.into(),
            actions: vec!["pull".into(), "push".into()],
        }]
    }

    #[test]
    fn tokens_verify_only_with_their_key_audience_and_time() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = issue(key, "reg", "acc-1", pull_push("team/app"), 300, 1_000_000).unwrap();
        let c = verify(key, "reg", &t, 1_000_100).unwrap();
        assert!(c.permits("team/app", "push") && !c.permits("other/app", "pull"));
        assert!(verify(b"another key, same length ........", "reg", &t, 1_000_100).is_err());
        assert!(verify(key, "other-service", &t, 1_000_100).is_err());
        assert!(verify(key, "reg", &t, 1_000_400).is_err());
        let mut forged = t.clone();
        forged.insert(forged.len() / 2, 'x');
        assert!(verify(key, "reg", &forged, 1_000_100).is_err());
    }
}

//! The registry's door in a secure cluster: Docker's token authentication, as `docker login`,
//! `docker push/pull`, skopeo and every OCI client speak it.
//!
//! * A request without credentials gets 401 with `WWW-Authenticate: Bearer realm=".../v2/token",
//!   service="pier-registry",scope="repository:NAME:pull,push"`.
//! * `GET /v2/token` takes a pier API token as the Basic password (or as a Bearer token) and
//!   answers a short-lived JWT whose `access` claim holds the actions of the asked scopes that
//!   the token's policies grant (`registry:pull:P`, `registry:push:P`, `read`, `management`).
//! * Any other `/v2/...` request is allowed when its Bearer JWT (signed with a key derived from
//!   the server join secret, so every server verifies what any server issued) permits the
//!   repository and action — or directly with a pier API token (curl), or with a cluster
//!   certificate: servers may do anything (peer blob copies), agents may pull.
//!
//! * Pulls of a repository matching a public prefix (`pier registry public add team/*`, kept
//!   in the replicated store) need no credential: such a request is let through, and the token
//!   endpoint answers an anonymous client a token for the pull scopes of public repositories
//!   (Docker and skopeo ask for one before pulling). Pushes, deletes and the catalog never are.
//!
//! Pushes (the manifest PUT), deletes and every refusal are written to the audit log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use pier_net::Caller;
use pier_security::acl::{Access, Resource, TokenRecord};
use pier_security::ca::{NodeIdentity, Role};
use pier_security::jwt::{self, AccessEntry};
use pier_store::{Consistency, Store, Table};

use pier_api::security::AuditEntry;

use super::audit::AuditSink;
use super::authz::lookup_token;

/// Repository patterns anyone may pull (`team/*` is a prefix): pattern → [`PublicPrefix`].
pub const REGISTRY_PUBLIC: Table = Table::from_static("registry_public");

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PublicPrefix {
    pub pattern: String,
    pub created_at_ms: u64,
}

/// The public patterns, from this server's copy of the store (a read per request: local).
async fn public_patterns(store: &Store) -> Vec<String> {
    store
        .read(Consistency::Default, |v| {
            v.range_prefix(&REGISTRY_PUBLIC, "")
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            // Unreadable: nothing is public (deny rather than open).
            tracing::warn!(error = %e, "cannot read the public registry prefixes");
            Vec::new()
        })
}

fn is_public(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|p| pier_security::acl::pattern_matches(p, name))
}

/// Whether `need` is a pull of a public repository.
fn public_pull(patterns: &[String], need: &Need) -> bool {
    matches!(need, Need::Repository { name, action: "pull" } if is_public(patterns, name))
}

/// The `service` of the challenge and the audience of the tokens.
pub const REGISTRY_SERVICE: &str = "pier-registry";
/// Lifetime of an issued registry token.
const JWT_TTL_SECS: u64 = 300;
/// Purpose of the key derivation that makes the signing key from the server secret.
pub const JWT_KEY_PURPOSE: &str = "pier/registry-jwt/v1";

#[derive(Clone)]
pub struct RegistryAuth {
    pub store: Store,
    /// HS256 key, the same on every server.
    pub jwt_key: Arc<Vec<u8>>,
    pub audit: AuditSink,
    pub server: String,
    /// `https` when the registry listener speaks TLS.
    pub scheme: &'static str,
}

/// The token signing key of this cluster: derived from the server join secret, which every
/// server holds, so any server verifies what another issued.
pub fn jwt_key(sec: &super::server::ServerSecurity) -> Arc<Vec<u8>> {
    let key = pier_security::seal::SealKey::derive(&sec.join.server_secret, JWT_KEY_PURPOSE);
    Arc::new(key.to_hex().into_bytes())
}

/// What the pipeline runner gives the Docker engine to push a build: a token for pull and
/// push on that one repository, issued to this server.
pub fn push_token_fn(key: Arc<Vec<u8>>, subject: String) -> pier_pipeline::PushTokenFn {
    Arc::new(move |repository: &str| {
        let access = vec![AccessEntry {
            kind: "repository".into(),
            name: repository.to_string(),
            actions: vec!["pull".into(), "push".into()],
        }];
        let now = pier_api::time::now_secs();
        jwt::issue(&key, REGISTRY_SERVICE, &subject, access, JWT_TTL_SECS, now)
            .map_err(|e| tracing::warn!(error = %e, "cannot sign a registry push token"))
            .ok()
    })
}

/// What a request does: an action on a repository, the catalog, or only the base check.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Need {
    /// `GET /v2/`: any valid credential.
    Base,
    Catalog,
    Repository {
        name: String,
        action: &'static str,
    },
}

impl Need {
    fn scope(&self) -> Option<String> {
        match self {
            Need::Base => None,
            Need::Catalog => Some("registry:catalog:*".into()),
            Need::Repository { name, action } => {
                let actions = if *action == "pull" {
                    "pull"
                } else {
                    "pull,push"
                };
                Some(format!("repository:{name}:{actions}"))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Need::Base => "the registry".into(),
            Need::Catalog => "listing repositories".into(),
            Need::Repository { name, action } => format!("{action} on {name}"),
        }
    }
}

/// The repository and action of an OCI distribution path (the name may hold slashes).
fn need_of(method: &Method, path: &str) -> Option<Need> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return Some(Need::Base);
    }
    if rest == "_catalog" {
        return Some(Need::Catalog);
    }
    let name = ["/manifests/", "/blobs/", "/tags/list", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker).map(|i| &rest[..i]))
        .max_by_key(|n| n.len())?;
    if name.is_empty() {
        return None;
    }
    let action = match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "push",
    };
    Some(Need::Repository {
        name: name.to_string(),
        action,
    })
}

/// Whether an API token's policies allow `need` (delete counts as push).
fn token_grants(token: &TokenRecord, need: &Need) -> bool {
    let (access, resource) = match need {
        Need::Base => return true,
        Need::Catalog => (Access::Read, Resource::Cluster),
        Need::Repository { name, action } => (
            if *action == "pull" {
                Access::Read
            } else {
                Access::Write
            },
            Resource::Repository(name),
        ),
    };
    token.policies.iter().any(|p| p.grants(access, resource))
}

/// The credential a request carries.
enum Credential {
    None,
    /// A pier API token (Basic password, or a Bearer value that is one).
    ApiToken(String),
    /// A registry JWT (it has dots; API token secrets never do).
    Jwt(String),
}

fn credential(headers: &HeaderMap) -> Credential {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Credential::None;
    };
    if let Some(b) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((_, password)) if !password.is_empty() => {
                Credential::ApiToken(password.to_string())
            }
            _ => Credential::None,
        };
    }
    match value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
    {
        Some(t) if t.contains('.') => Credential::Jwt(t.to_string()),
        Some(t) if !t.is_empty() => Credential::ApiToken(t.to_string()),
        _ => Credential::None,
    }
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (status, axum::Json(body)).into_response()
}

/// 401 with the challenge that sends the client to the token endpoint.
fn challenge(auth: &RegistryAuth, req: &Request, need: &Need, message: &str) -> Response {
    // HTTP/2 clients (curl over TLS) name the host in `:authority`, not in a Host header.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let mut value = format!(
        "Bearer realm=\"{}://{host}/v2/token\",service=\"{REGISTRY_SERVICE}\"",
        auth.scheme
    );
    if let Some(scope) = need.scope() {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

enum Verdict {
    Allow(String),
    /// No or unusable credentials: challenge (also a JWT without the scope: Docker then
    /// asks for a token with the challenge's scope).
    Challenge(String),
    /// Valid credentials that do not cover the request.
    Deny(String, String),
}

fn decide_node(id: &pier_security::ca::NodeIdentity, need: &Need) -> Verdict {
    let who = format!("node:{}/{}", id.role, id.name);
    let pulls = matches!(need, Need::Base | Need::Repository { action: "pull", .. });
    match id.role {
        Role::Server => Verdict::Allow(who),
        // A gateway runs no containers: it has nothing to pull.
        Role::Gateway => Verdict::Deny(who, "gateways may not use the registry".into()),
        _ if pulls => Verdict::Allow(who),
        _ => Verdict::Deny(who, "agents may only pull".into()),
    }
}

fn decide_jwt(auth: &RegistryAuth, token: &str, need: &Need) -> Verdict {
    let now = pier_api::time::now_secs();
    let claims = match jwt::verify(&auth.jwt_key, REGISTRY_SERVICE, token, now) {
        Ok(c) => c,
        Err(e) => return Verdict::Challenge(format!("registry token refused: {e}")),
    };
    let ok = match need {
        Need::Base => true,
        Need::Catalog => claims.access.iter().any(|a| a.kind == "registry"),
        Need::Repository { name, action } => {
            claims.permits(name, action) || (*action == "delete" && claims.permits(name, "push"))
        }
    };
    if ok {
        Verdict::Allow(format!("token:{}", claims.sub))
    } else {
        Verdict::Challenge(format!(
            "the registry token does not allow {}",
            need.describe()
        ))
    }
}

async fn decide(
    auth: &RegistryAuth,
    caller: Option<NodeIdentity>,
    credential: Credential,
    need: &Need,
) -> Verdict {
    if let Some(id) = caller {
        return decide_node(&id, need);
    }
    if matches!(need, Need::Repository { action: "pull", .. })
        && public_pull(&public_patterns(&auth.store).await, need)
    {
        // Whatever the credential (none, or one without this repository): public.
        return Verdict::Allow("anonymous".into());
    }
    match credential {
        Credential::None => Verdict::Challenge("authentication required".into()),
        Credential::Jwt(token) => decide_jwt(auth, &token, need),
        Credential::ApiToken(secret) => match lookup_token(&auth.store, &secret).await {
            Some(t) if !t.is_expired(pier_api::time::now_ms()) => {
                let who = format!("token:{}", t.accessor);
                if token_grants(&t, need) {
                    Verdict::Allow(who)
                } else {
                    let why = format!("the token's policies do not allow {}", need.describe());
                    Verdict::Deny(who, why)
                }
            }
            _ => Verdict::Challenge("token not found, revoked or expired".into()),
        },
    }
}

/// The layer in front of the registry router (secure clusters only).
pub async fn layer(State(auth): State<RegistryAuth>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let cred = credential(req.headers());
    if path == "/v2/token" && method == Method::GET {
        return token_endpoint(&auth, cred, req.uri().query()).await;
    }
    let Some(need) = need_of(&method, &path) else {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no such endpoint");
    };
    let caller = req.extensions().get::<Caller>().and_then(|c| c.0.clone());
    let (who, response) = match decide(&auth, caller, cred, &need).await {
        Verdict::Allow(who) => (who, next.run(req).await),
        Verdict::Challenge(message) => (
            "anonymous".to_string(),
            challenge(&auth, &req, &need, &message),
        ),
        Verdict::Deny(who, message) => (who, oci_error(StatusCode::FORBIDDEN, "DENIED", &message)),
    };
    let status = response.status().as_u16();
    // A push is many blob requests; its manifest PUT is the one worth a line.
    let pushed = method == Method::PUT && path.contains("/manifests/");
    let refused = status == 403 || (status == 401 && need != Need::Base);
    if pushed || method == Method::DELETE || refused {
        auth.audit.record(AuditEntry {
            at_ms: pier_api::time::now_ms(),
            who,
            method: method.to_string(),
            path,
            status,
            server: auth.server.clone(),
        });
    }
    response
}

/// Scopes asked for (`scope` may repeat: one per repository).
fn scopes(query: Option<&str>) -> Vec<(String, String, Vec<String>)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .filter_map(|(_, v)| {
            let v = percent_decode(v);
            let mut parts = v.splitn(3, ':');
            let kind = parts.next()?.to_string();
            let name = parts.next()?.to_string();
            let actions = parts.next()?.split(',').map(str::to_string).collect();
            Some((kind, name, actions))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The actions of one asked scope that `token` grants (None: an anonymous client), pulls of
/// public repositories included.
fn granted(
    token: Option<&TokenRecord>,
    public: &[String],
    kind: &str,
    name: &str,
    actions: &[String],
) -> Vec<String> {
    actions
        .iter()
        .filter(|a| {
            let need = match (kind, a.as_str()) {
                ("registry", _) => Need::Catalog,
                ("repository", "pull") => Need::Repository {
                    name: name.to_string(),
                    action: "pull",
                },
                ("repository", "push" | "delete" | "*") => Need::Repository {
                    name: name.to_string(),
                    action: "push",
                },
                _ => return false,
            };
            public_pull(public, &need) || token.is_some_and(|t| token_grants(t, &need))
        })
        .cloned()
        .collect()
}

/// `GET /v2/token`: a pier API token in, a registry JWT for the granted part of the scopes out.
async fn token_endpoint(auth: &RegistryAuth, cred: Credential, query: Option<&str>) -> Response {
    let asked = scopes(query);
    let basic_challenge = |message: &str| {
        let mut r = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pier\""),
        );
        r
    };
    let public = public_patterns(&auth.store).await;
    let token = match cred {
        Credential::ApiToken(secret) => match lookup_token(&auth.store, &secret).await {
            Some(t) if !t.is_expired(pier_api::time::now_ms()) => Some(t),
            _ => return basic_challenge("token not found, revoked or expired"),
        },
        // Anonymous: a token only for pulls of public repositories, if any was asked.
        _ if asked.iter().any(|(kind, name, actions)| {
            !granted(None, &public, kind, name, actions).is_empty()
        }) =>
        {
            None
        }
        _ => return basic_challenge("log in with a pier API token as the password"),
    };
    let access: Vec<AccessEntry> = asked
        .into_iter()
        .map(|(kind, name, actions)| {
            let actions = granted(token.as_ref(), &public, &kind, &name, &actions);
            AccessEntry {
                kind,
                name,
                actions,
            }
        })
        .filter(|a| !a.actions.is_empty())
        .collect();
    let now = pier_api::time::now_secs();
    match jwt::issue(
        &auth.jwt_key,
        REGISTRY_SERVICE,
        token.as_ref().map_or("anonymous", |t| t.accessor.as_str()),
        access,
        JWT_TTL_SECS,
        now,
    ) {
        Ok(jwt) => axum::Json(serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": JWT_TTL_SECS,
        }))
        .into_response(),
        Err(e) => oci_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            &format!("cannot sign the registry token: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, action: &'static str) -> Option<Need> {
        Some(Need::Repository {
            name: name.into(),
            action,
        })
    }

    #[test]
    fn paths_name_their_repository_and_action() {
        let get = Method::GET;
        assert_eq!(need_of(&get, "/v2/"), Some(Need::Base));
        assert_eq!(need_of(&get, "/v2/_catalog"), Some(Need::Catalog));
        assert_eq!(
            need_of(&get, "/v2/team/app/manifests/v1"),
            repo("team/app", "pull")
        );
        assert_eq!(
            need_of(&Method::HEAD, "/v2/a/blobs/sha256:00"),
            repo("a", "pull")
        );
        assert_eq!(
            need_of(&Method::PATCH, "/v2/a/blobs/uploads/1"),
            repo("a", "push")
        );
        assert_eq!(
            need_of(&Method::POST, "/v2/a/blobs/uploads/"),
            repo("a", "push")
        );
        assert_eq!(
            need_of(&Method::DELETE, "/v2/a/b/manifests/sha256:00"),
            repo("a/b", "delete")
        );
        assert_eq!(need_of(&get, "/v2/a/tags/list"), repo("a", "pull"));
        // A repository named like a marker resolves to the longest name.
        assert_eq!(
            need_of(&get, "/v2/x/manifests/y/manifests/v1"),
            repo("x/manifests/y", "pull")
        );
        assert_eq!(need_of(&get, "/v2/manifests/v1"), None);
        assert_eq!(need_of(&get, "/other"), None);
    }

    #[test]
    fn scopes_are_parsed_and_decoded() {
        let s = scopes(Some(
            "service=pier-registry&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&scope=registry:catalog:*",
        ));
        assert_eq!(
            s,
            vec![
                (
                    "repository".into(),
                    "team/app".into(),
                    vec!["pull".into(), "push".into()]
                ),
                ("registry".into(), "catalog".into(), vec!["*".into()]),
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn token_policies_decide_the_granted_actions() {
        let (_, t) = TokenRecord::create(
            "ci",
            vec![pier_security::acl::Policy::parse("registry:push:team/*").unwrap()],
            None,
            0,
        );
        let both = ["pull".to_string(), "push".to_string()];
        let none: Vec<String> = Vec::new();
        assert_eq!(
            granted(Some(&t), &none, "repository", "team/app", &both),
            both.to_vec()
        );
        assert!(granted(Some(&t), &none, "repository", "other/app", &both).is_empty());
        // A public prefix adds pulls, for anyone, and never pushes.
        let public = vec!["pub/*".to_string(), "other/app".to_string()];
        let pull = vec!["pull".to_string()];
        assert_eq!(
            granted(Some(&t), &public, "repository", "other/app", &both),
            pull
        );
        assert_eq!(granted(None, &public, "repository", "pub/x/y", &both), pull);
        assert!(granted(None, &public, "repository", "pubx", &both).is_empty());
        assert!(granted(None, &public, "registry", "catalog", &["*".to_string()]).is_empty());
        let (_, r) = TokenRecord::create(
            "r",
            vec![pier_security::acl::Policy::parse("read").unwrap()],
            None,
            0,
        );
        assert_eq!(
            granted(Some(&r), &none, "repository", "any", &both),
            vec!["pull".to_string()]
        );
    }

    #[test]
    fn basic_and_bearer_credentials_are_told_apart() {
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("ci:0123abcd");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert!(matches!(credential(&h), Credential::ApiToken(t) if t == "0123abcd"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer eyJ.a.b"),
        );
        assert!(matches!(credential(&h), Credential::Jwt(_)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123abcd"),
        );
        assert!(matches!(credential(&h), Credential::ApiToken(_)));
        assert!(matches!(credential(&HeaderMap::new()), Credential::None));
    }
}

//! The one layer every request of the HTTP API passes: who is calling (client certificate,
//! API token, or nobody), what the route needs ([`super::routes`]), allow or refuse, and an
//! audit line for everything that changes something (and every refusal).
//!
//! * `pier dev` ([`Mode::Dev`]): no tokens, but only loopback `Host` names are served, so a
//!   web page cannot reach the API through DNS rebinding.
//! * `--insecure` ([`Mode::Insecure`]): everything allowed, audited.
//! * A secure cluster ([`Mode::Secure`]): deny by default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pier_api::security::AuditEntry;
use pier_api::{ApiError, ErrorCode};
use pier_net::Caller;
use pier_security::acl::{Access, Resource, TokenRecord};
use pier_security::ca::{NodeIdentity, Role};
use pier_store::{Consistency, Store, Table};

use super::routes::{needs_body_name, requirement, OwnedResource, Requirement};

/// Where API tokens live: key = SHA-256 of the secret.
pub const ACL_TOKENS: Table = Table::from_static("acl_tokens");
/// accessor → SHA-256 of the secret (for listing and revoking).
pub const ACL_ACCESSORS: Table = Table::from_static("acl_accessors");
/// Largest body read to find the name a route acts on (service files are far smaller).
const PEEK_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Insecure,
    Secure,
}

/// Who a request comes from.
#[derive(Clone, Debug)]
pub enum Principal {
    /// `pier dev`, from this machine.
    Local,
    /// No credential (or `--insecure`).
    Anonymous,
    Node(NodeIdentity),
    Token(Box<TokenRecord>),
}

impl Principal {
    pub fn who(&self) -> String {
        match self {
            Principal::Local => "local".into(),
            Principal::Anonymous => "anonymous".into(),
            Principal::Node(id) => format!("node:{}/{}", id.role, id.name),
            Principal::Token(t) => format!("token:{}", t.accessor),
        }
    }

    /// Whether secret values (service env) may be shown: management tokens, servers, and
    /// the unauthenticated modes.
    pub fn sees_secrets(&self) -> bool {
        match self {
            Principal::Local | Principal::Anonymous => true,
            Principal::Node(id) => id.role == Role::Server,
            Principal::Token(t) => t
                .policies
                .iter()
                .any(|p| matches!(p, pier_security::acl::Policy::Management)),
        }
    }
}

#[derive(Clone)]
pub struct AuthState {
    pub mode: Mode,
    pub store: Store,
    /// This server's name, for the audit log.
    pub server: String,
    /// The catalog agent's node name (Consul `/v1/agent/*` ids belong to it).
    pub agent_node: String,
    pub audit: super::audit::AuditSink,
    pub denied: Arc<AtomicU64>,
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (status, axum::Json(ApiError::new(code, message))).into_response()
}

/// The API token a request carries, in any of the ways Consul clients send one.
pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    if let Some(v) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// Looks a token up by the hash of its secret in this server's applied state, as Consul
/// servers do: a read-index round to the leader on every request of a follower would cost a
/// third of the cluster's throughput. A revocation returns only once every server has applied
/// it (`api::revoke_token`), so it is in force everywhere at once. A token this server does
/// not know yet (created a moment ago on another server) is looked up again, freshly.
pub async fn lookup_token(store: &Store, secret: &str) -> Option<TokenRecord> {
    let hash = pier_security::token::hash_secret(secret);
    for consistency in [Consistency::Stale, Consistency::Default] {
        let found = store
            .read(consistency, |v| {
                v.get(&ACL_TOKENS, &hash).map(|e| e.value.clone())
            })
            .await
            .ok()
            .flatten();
        if let Some(bytes) = found {
            return serde_json::from_slice(&bytes).ok();
        }
    }
    None
}

fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: only tools on this machine send that.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name a body-carrying route acts on (service file, pipeline, Consul registration).
fn name_in_body(path: &str, body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    match path {
        "/api/v1/services" => {
            let file = json.get("file")?.as_str()?;
            let toml: toml::Value = toml::from_str(file).ok()?;
            toml.get("name")?.as_str().map(str::to_string)
        }
        "/api/v1/pipelines" => json.get("name")?.as_str().map(str::to_string),
        _ => {
            let obj = json.as_object()?;
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("name"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        }
    }
}

/// Reads the body (bounded) when the route's resource is named in it, and puts it back.
async fn peek_name(req: Request) -> Result<(Request, Option<String>), Response> {
    if !needs_body_name(req.method(), req.uri().path()) {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, PEEK_BODY_LIMIT)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("request bodies here are limited to {PEEK_BODY_LIMIT} bytes"),
            )
        })?;
    let name = name_in_body(parts.uri.path(), &bytes);
    Ok((Request::from_parts(parts, Body::from(bytes)), name))
}

/// The service a Consul instance or check id (of this server's agent node) belongs to.
async fn service_of(state: &AuthState, table: Table, id: &str) -> Option<String> {
    let key = format!("{}/{id}", state.agent_node);
    let bytes = state
        .store
        .read(Consistency::Default, |v| {
            v.get(&table, &key).map(|e| e.value.clone())
        })
        .await
        .ok()??;
    let text = String::from_utf8(bytes).ok()?;
    // Instance ids map to the service name; check ids to `service/node/id/check`.
    let service = text.split('/').next()?.to_string();
    (!service.is_empty() && service != "_node").then_some(service)
}

/// Whether the agent of `node` runs task `id` (its task key is `node/id`).
async fn task_on_node(store: &Store, node: &str, id: &str) -> bool {
    let key = format!("{node}/{id}");
    store
        .read(Consistency::Default, |v| {
            v.get(&pier_orchestrator::tables::TASKS, &key).is_some()
        })
        .await
        .unwrap_or(false)
}

enum Verdict {
    Allow,
    /// 401: no credential where one is needed.
    Unauthenticated(String),
    /// 403: the credential does not allow it.
    Forbidden(String),
}

fn is_management(p: &Principal) -> bool {
    matches!(p, Principal::Token(t) if t.policies.iter().any(|p| matches!(p, pier_security::acl::Policy::Management)))
}

async fn decide(state: &AuthState, who: &Principal, need: &Requirement) -> Verdict {
    use Verdict::*;
    if matches!(need, Requirement::Public) {
        return Allow;
    }
    if state.mode != Mode::Secure {
        return Allow;
    }
    if let Principal::Node(id) = who {
        if id.role == Role::Server {
            return Allow;
        }
    }
    let acl = |access: Access, r: &OwnedResource| -> Verdict {
        match who {
            Principal::Token(t) if t.allows(access, r.as_resource()) => Allow,
            Principal::Token(t) => Forbidden(format!(
                "token {} ({}) does not allow {} of {:?}",
                t.accessor,
                t.policies.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                if access == Access::Read { "read" } else { "write" },
                r.as_resource()
            )),
            Principal::Node(id) if node_acl_allows(id.role, access, r.as_resource()) => Allow,
            Principal::Node(id) => Forbidden(format!("{id} may not do this")),
            _ => Unauthenticated(
                "this cluster needs an API token: send it as `Authorization: Bearer`, `X-Consul-Token` or ?token= (the CLI reads PIER_TOKEN)".into(),
            ),
        }
    };
    match need {
        Requirement::Public => Allow,
        Requirement::Acl(access, r) => acl(*access, r),
        Requirement::NodeSelf(node) => match who {
            Principal::Node(id) if id.role == Role::Agent && id.name == *node => Allow,
            Principal::Node(id) => {
                Forbidden(format!("{id} may act only for its own node, not {node:?}"))
            }
            p if is_management(p) => Allow,
            Principal::Token(_) => {
                Forbidden("only the node's own agent (or a management token) may do this".into())
            }
            _ => Unauthenticated("node endpoints need the node's certificate".into()),
        },
        Requirement::NodeAgent(node) => match who {
            Principal::Node(id) if id.role == Role::Agent && id.name == *node => Allow,
            Principal::Node(id) => Forbidden(format!(
                "{id} may read only its own node's secrets, not {node:?}'s"
            )),
            Principal::Token(_) => Forbidden(
                "secret values go only to the agent of the node that runs the task".into(),
            ),
            _ => Unauthenticated("secret values need the node's certificate".into()),
        },
        Requirement::TaskOwner(task) => match who {
            Principal::Node(id) if id.role == Role::Agent => {
                if task_on_node(&state.store, &id.name, task).await {
                    Allow
                } else {
                    Forbidden(format!("task {task:?} does not run on node {:?}", id.name))
                }
            }
            p if is_management(p) => Allow,
            Principal::Node(id) => Forbidden(format!("{id} may not report task status")),
            Principal::Token(_) => {
                Forbidden("only the agent of the task's node may report its status".into())
            }
            _ => Unauthenticated(
                "task status comes from the node's agent, with its certificate".into(),
            ),
        },
        Requirement::CatalogInstance(id) | Requirement::CatalogCheck(id) => {
            let table = if matches!(need, Requirement::CatalogInstance(_)) {
                pier_catalog::records::INSTANCE_IDS
            } else {
                pier_catalog::records::CHECK_IDS
            };
            match service_of(state, table, id).await {
                Some(service) => acl(Access::Write, &OwnedResource::CatalogService(service)),
                // Unknown id: the handler answers 404 to whoever may write every service.
                None => acl(Access::Write, &OwnedResource::CatalogService(String::new())),
            }
        }
        // The keys a gateway terminates TLS with: gateways (their certificate) and management.
        Requirement::GatewayCerts => match who {
            Principal::Node(id) if id.role == Role::Gateway => Allow,
            p if is_management(p) => Allow,
            Principal::Node(id) => Forbidden(format!(
                "{id} may not read certificate keys: only gateways and management tokens may"
            )),
            Principal::Token(_) => Forbidden(
                "certificate keys go only to gateways (their certificate) and management tokens"
                    .into(),
            ),
            _ => Unauthenticated(
                "certificate keys need a gateway's certificate (join with `pier gateway --token`)"
                    .into(),
            ),
        },
        // Servers were allowed above.
        Requirement::ServersOnly => match who {
            Principal::Anonymous => {
                Unauthenticated("this endpoint needs a pier server's certificate".into())
            }
            _ => Forbidden("only pier servers may call this endpoint".into()),
        },
        Requirement::Unknown => Forbidden("no access rule covers this endpoint".into()),
    }
}

static AUDIT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The layer itself (`axum::middleware::from_fn_with_state`).
/// What a node's certificate may do where a token would need an ACL: agents and gateways
/// follow the catalog and the member list; agents also read KV keys, because the `[files]`
/// templates of any task placed on them may name any key (`{{ key "app/config" }}`) and they
/// follow those keys with the KV API's own blocking queries. No node writes a key.
fn node_acl_allows(role: Role, access: Access, r: Resource<'_>) -> bool {
    access == Access::Read
        && match r {
            // Every node follows the catalog (routes and health); a gateway nothing more,
            // the least a load balancer needs.
            Resource::CatalogService(_) => true,
            // Agents and servers follow the member list.
            Resource::Cluster => role != Role::Gateway,
            // Agents read the KV keys their tasks' [files] templates name.
            Resource::Key(_) => role == Role::Agent,
            _ => false,
        }
}

pub async fn layer(State(state): State<AuthState>, req: Request, next: Next) -> Response {
    if state.mode == Mode::Dev && !is_loopback_host(req.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "pier dev answers only requests addressed to a loopback name (localhost, 127.0.0.1): this Host header could be a DNS-rebinding attack".into(),
        );
    }
    let caller = req.extensions().get::<Caller>().and_then(|c| c.0.clone());
    let who = match (state.mode, caller) {
        (Mode::Dev, _) => Principal::Local,
        (_, Some(id)) => Principal::Node(id),
        (Mode::Insecure, None) => Principal::Anonymous,
        (Mode::Secure, None) => match token_of(req.headers(), req.uri().query()) {
            None => Principal::Anonymous,
            Some(secret) => match lookup_token(&state.store, &secret).await {
                Some(t) if !t.is_expired(pier_api::time::now_ms()) => Principal::Token(Box::new(t)),
                _ => {
                    state.denied.fetch_add(1, Ordering::Relaxed);
                    return error(
                        StatusCode::FORBIDDEN,
                        ErrorCode::Forbidden,
                        "ACL token not found, revoked or expired".into(),
                    );
                }
            },
        },
    };
    let (mut req, body_name) = match peek_name(req).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let need = requirement(&method, &path, body_name.as_deref());
    let verdict = decide(&state, &who, &need).await;
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let response = match verdict {
        Verdict::Allow => {
            req.extensions_mut().insert(who.clone());
            req.extensions_mut()
                .insert(pier_api::service::SecretsVisible(who.sees_secrets()));
            let reader = who.clone();
            req.extensions_mut()
                .insert(pier_api::service::KeysReadable(Arc::new(
                    move |key: &str| match &reader {
                        Principal::Token(t) => t.allows(Access::Read, Resource::Key(key)),
                        _ => true,
                    },
                )));
            next.run(req).await
        }
        // Consul answers a request without a token as its anonymous token: 403 "Permission
        // denied", which Consul clients report as such (401 means "ACLs disabled" to them).
        Verdict::Unauthenticated(m) if path.starts_with("/v1/") => {
            state.denied.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("Permission denied: {m}"),
            )
        }
        Verdict::Unauthenticated(m) => {
            state.denied.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m)
        }
        Verdict::Forbidden(m) => {
            state.denied.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m)
        }
    };
    let status = response.status().as_u16();
    // Heartbeats and status reports are liveness traffic, not changes anyone audits (at fleet
    // size they would drown the log); refused ones are recorded like every refusal.
    let routine =
        path.ends_with("/alive") || path.ends_with("/heartbeat") || path.ends_with("/status");
    // A console request is audited where it acts: its in-process API call passes this layer
    // again, with the session's token, and is recorded there under the token's name (here it
    // would be an anonymous duplicate). Sign-ins make no such call: they are recorded here.
    let console = (path == "/ui" || path.starts_with("/ui/")) && path != "/ui/login";
    if !console && ((mutating && !(routine && status < 400)) || status == 401 || status == 403) {
        state.audit.record(AuditEntry {
            at_ms: pier_api::time::now_ms(),
            who: who.who(),
            method: method.to_string(),
            path,
            status,
            server: state.server.clone(),
        });
        let _ = AUDIT_SEQ.fetch_add(1, Ordering::Relaxed);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn nodes_read_the_catalog_and_only_agents_read_keys() {
        use pier_security::acl::{Access, Resource};
        assert!(node_acl_allows(
            Role::Agent,
            Access::Read,
            Resource::Key("app/config")
        ));
        assert!(!node_acl_allows(
            Role::Agent,
            Access::Write,
            Resource::Key("app/config")
        ));
        assert!(!node_acl_allows(
            Role::Gateway,
            Access::Read,
            Resource::Key("app/config")
        ));
        assert!(node_acl_allows(
            Role::Gateway,
            Access::Read,
            Resource::CatalogService("api")
        ));
        assert!(!node_acl_allows(
            Role::Agent,
            Access::Read,
            Resource::Service("api")
        ));
        assert!(!node_acl_allows(
            Role::Agent,
            Access::Write,
            Resource::Cluster
        ));
    }

    #[test]
    fn tokens_are_found_where_consul_clients_put_them() {
        assert_eq!(
            token_of(&headers(&[("authorization", "Bearer abc")]), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_of(&headers(&[("x-consul-token", "def")]), None).as_deref(),
            Some("def")
        );
        assert_eq!(
            token_of(&HeaderMap::new(), Some("index=3&token=ghi")).as_deref(),
            Some("ghi")
        );
        assert_eq!(token_of(&HeaderMap::new(), Some("index=3")), None);
    }

    #[test]
    fn only_loopback_hosts_pass_in_dev() {
        for ok in [
            "localhost:8500",
            "127.0.0.1:8500",
            "[::1]:8500",
            "web.localhost:8080",
            "127.0.0.1",
        ] {
            assert!(is_loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8500",
            "10.0.0.1:8500",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn names_are_read_from_bodies() {
        let deploy = serde_json::json!({"file": "name = \"web\"\nimage = \"x\"\n"}).to_string();
        assert_eq!(
            name_in_body("/api/v1/services", deploy.as_bytes()).as_deref(),
            Some("web")
        );
        let reg = br#"{"name": "api", "Port": 80}"#;
        assert_eq!(
            name_in_body("/v1/agent/service/register", reg).as_deref(),
            Some("api")
        );
        assert_eq!(name_in_body("/api/v1/pipelines", b"not json"), None);
    }
}

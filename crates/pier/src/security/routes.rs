//! Who may call each endpoint: the one table every request of the HTTP API is checked against
//! (by the layer in `authz.rs`) before any handler runs. An endpoint missing here is refused
//! (deny by default), so a new route cannot ship without a decision.

use axum::http::Method;
use pier_security::acl::{Access, Resource};

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone: the CA download and the join/renew endpoints (they authenticate themselves),
    /// the webhook (signed with its pipeline's secret), leader status (Consul answers it
    /// without a token too).
    Public,
    /// A token (or a server) granted this access to this resource.
    Acl(Access, OwnedResource),
    /// The agent of node `name` itself (its certificate), or a server, or a management token.
    NodeSelf(String),
    /// The agent of node `name` only (or a server): not even a management token. Secret
    /// values go nowhere else.
    NodeAgent(String),
    /// The agent of the node the task `id` runs on, or a server, or a management token.
    TaskOwner(String),
    /// Write access to the catalog service that the instance `id` belongs to.
    CatalogInstance(String),
    /// Write access to the catalog service that the check `id` belongs to.
    CatalogCheck(String),
    /// The certificates and keys gateways serve: a gateway's certificate, a server, or a
    /// management token; no agent and no other token.
    GatewayCerts,
    /// Other servers only (their certificates); nobody else, not even a management token.
    ServersOnly,
    /// Nothing matches: refused.
    Unknown,
}

/// [`Resource`] with owned names, so a requirement can outlive the request it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedResource {
    Service(String),
    Pipeline(String),
    Key(String),
    CatalogService(String),
    Node(String),
    Cluster,
}

impl OwnedResource {
    pub fn as_resource(&self) -> Resource<'_> {
        match self {
            OwnedResource::Service(s) => Resource::Service(s),
            OwnedResource::Pipeline(s) => Resource::Pipeline(s),
            OwnedResource::Key(s) => Resource::Key(s),
            OwnedResource::CatalogService(s) => Resource::CatalogService(s),
            OwnedResource::Node(s) => Resource::Node(s),
            OwnedResource::Cluster => Resource::Cluster,
        }
    }
}

/// Routes whose resource name is in the body: the layer reads the body (bounded) and passes
/// the name it finds.
pub fn needs_body_name(method: &Method, path: &str) -> bool {
    (method == Method::POST && (path == "/api/v1/services" || path == "/api/v1/pipelines"))
        || (method == Method::PUT && path == "/v1/agent/service/register")
}

fn read_or_write(method: &Method) -> Access {
    if method == Method::GET || method == Method::HEAD {
        Access::Read
    } else {
        Access::Write
    }
}

/// The requirement of `method path`. `body_name` is the name found in the body of the routes
/// [`needs_body_name`] lists (None if absent or unreadable: then no name can be granted).
pub fn requirement(method: &Method, path: &str, body_name: Option<&str>) -> Requirement {
    use OwnedResource as R;
    use Requirement::*;
    let rw = read_or_write(method);
    let acl = |access: Access, r: OwnedResource| Acl(access, r);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let tail = |from: usize| segs.get(from..).map(|t| t.join("/")).unwrap_or_default();
    match segs.as_slice() {
        ["pier", "v1", "ca" | "join" | "renew"] => Public,
        ["v1", "status", "leader" | "peers"] => Public,
        // The console's pages hold no data of their own: each reads and writes through an
        // in-process call of this API, which passes this layer again with the session's token.
        ["ui"] | ["ui", ..] => Public,
        ["api", "v1", "pipelines", _, "hooks", "push"] => Public,
        ["metrics"] | ["api", "v1", "status"] | ["api", "v1", "members"] => {
            acl(Access::Read, R::Cluster)
        }
        ["api", "v1", "members", _] => acl(Access::Write, R::Cluster),
        ["api", "v1", "snapshot", ..] | ["api", "v1", "audit", ..] => acl(rw, R::Cluster),
        ["api", "v1", "acl", ..] | ["api", "v1", "join-tokens", ..] | ["api", "v1", "ca", ..] => {
            // Even listing tokens is for management: accessors are half a credential.
            acl(Access::Write, R::Cluster)
        }
        ["api", "v1", "registry", "peer", ..] => ServersOnly,
        // Making a repository pullable by anyone is a cluster-wide decision: management.
        ["api", "v1", "registry", "public"] if *method == Method::GET => {
            acl(Access::Read, R::Cluster)
        }
        ["api", "v1", "registry", "public", ..] => acl(Access::Write, R::Cluster),
        ["api", "v1", "registry", "endpoints"] => acl(Access::Read, R::Cluster),
        // Certificates: adding or removing one changes what every gateway serves, so it takes
        // cluster write (management) access; the listing holds no key, only metadata.
        ["api", "v1", "certs"] => acl(rw, R::Cluster),
        ["api", "v1", "certs", _] => acl(Access::Write, R::Cluster),
        // Hands out private keys (a gateway cannot terminate TLS without them): gateways and
        // management only.
        ["api", "v1", "gateway", "certs"] if *method == Method::GET => GatewayCerts,
        ["api", "v1", "gateway", "certs"] => Unknown,
        ["api", "v1", "kv"] => acl(rw, R::Key(String::new())),
        ["api", "v1", "kv", ..] => acl(rw, R::Key(tail(3))),
        ["v1", "kv"] | ["v1", "kv", ""] => acl(rw, R::Key(String::new())),
        ["v1", "kv", ..] => acl(rw, R::Key(tail(2))),
        // A transaction may touch any key: only a token that may write every key.
        ["api", "v1", "txn"] | ["v1", "txn"] => acl(Access::Write, R::Key(String::new())),
        ["api", "v1", "services"] if *method == Method::POST => match body_name {
            Some(n) => acl(Access::Write, R::Service(n.to_string())),
            None => acl(Access::Write, R::Service(String::new())),
        },
        ["api", "v1", "services"] => acl(Access::Read, R::Service("*".into())),
        ["api", "v1", "services", name, ..] => acl(rw, R::Service(name.to_string())),
        ["api", "v1", "deployments", _] => acl(Access::Read, R::Service("*".into())),
        ["api", "v1", "nodes"] => acl(Access::Read, R::Node("*".into())),
        ["api", "v1", "nodes", name] if *method == Method::PUT => NodeSelf(name.to_string()),
        ["api", "v1", "nodes", name, "alive"] => NodeSelf(name.to_string()),
        ["api", "v1", "nodes", name, "tasks"] => NodeSelf(name.to_string()),
        // Secret values, only for the node whose task uses them.
        ["api", "v1", "nodes", name, "tasks", _, "secrets"] if *method == Method::GET => {
            NodeAgent(name.to_string())
        }
        // Secrets: setting or removing one changes what services run (and rolls them), so it
        // takes cluster write (management) access; the listing holds names and sizes only.
        ["api", "v1", "secrets"] if *method == Method::GET => acl(Access::Read, R::Cluster),
        // Named volumes hold services' data: removing one takes management access.
        ["api", "v1", "volumes"] if *method == Method::GET => acl(Access::Read, R::Cluster),
        ["api", "v1", "volumes", _] if *method == Method::DELETE => acl(Access::Write, R::Cluster),
        ["api", "v1", "secrets", _] if *method == Method::PUT || *method == Method::DELETE => {
            acl(Access::Write, R::Cluster)
        }
        ["api", "v1", "nodes", name, "drain"] => acl(Access::Write, R::Node(name.to_string())),
        ["api", "v1", "nodes", name] => acl(rw, R::Node(name.to_string())),
        ["api", "v1", "tasks", id, "status"] => TaskOwner(id.to_string()),
        ["api", "v1", "tasks", _] => acl(Access::Read, R::Service("*".into())),
        ["api", "v1", "pipelines"] if *method == Method::POST => acl(
            Access::Write,
            R::Pipeline(body_name.unwrap_or("").to_string()),
        ),
        ["api", "v1", "pipelines"] => acl(Access::Read, R::Pipeline("*".into())),
        ["api", "v1", "pipelines", name, ..] => acl(rw, R::Pipeline(name.to_string())),
        ["api", "v1", "catalog", "routes"] => acl(Access::Read, R::CatalogService("*".into())),
        ["api", "v1", "catalog", "nodes", node, ..] => NodeSelf(node.to_string()),
        ["v1", "catalog", "service", name] | ["v1", "health", "service" | "checks", name] => {
            acl(Access::Read, R::CatalogService(name.to_string()))
        }
        ["v1", "catalog", ..] | ["v1", "health", ..] => {
            acl(Access::Read, R::CatalogService("*".into()))
        }
        ["v1", "agent", "self" | "services" | "checks"] => {
            acl(Access::Read, R::CatalogService("*".into()))
        }
        ["v1", "agent", "service", "register"] => acl(
            Access::Write,
            R::CatalogService(body_name.unwrap_or("").to_string()),
        ),
        // By instance or check id: the layer looks up the service it belongs to.
        ["v1", "agent", "service", "deregister", id] => CatalogInstance(id.to_string()),
        ["v1", "agent", "check", _, id] => CatalogCheck(id.to_string()),
        _ => Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OwnedResource as R;
    use Requirement::*;

    fn req(m: Method, p: &str) -> Requirement {
        requirement(&m, p, None)
    }

    #[test]
    fn every_kind_of_route_has_its_decision() {
        assert_eq!(req(Method::GET, "/pier/v1/ca"), Public);
        assert_eq!(
            req(Method::POST, "/api/v1/pipelines/web/hooks/push"),
            Public
        );
        assert_eq!(
            req(Method::GET, "/api/v1/status"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::GET, "/api/v1/catalog/routes"),
            Acl(Access::Read, R::CatalogService("*".into()))
        );

        assert_eq!(
            req(Method::DELETE, "/api/v1/members/s3"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(
            req(Method::GET, "/api/v1/kv/app/x"),
            Acl(Access::Read, R::Key("app/x".into()))
        );
        assert_eq!(
            req(Method::PUT, "/v1/kv/app/x"),
            Acl(Access::Write, R::Key("app/x".into()))
        );
        assert_eq!(
            req(Method::GET, "/v1/kv/"),
            Acl(Access::Read, R::Key(String::new()))
        );
        assert_eq!(
            requirement(&Method::POST, "/api/v1/services", Some("web")),
            Acl(Access::Write, R::Service("web".into()))
        );
        assert_eq!(
            req(Method::PUT, "/api/v1/services/web/scale"),
            Acl(Access::Write, R::Service("web".into()))
        );
        assert_eq!(
            req(Method::GET, "/api/v1/certs"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::POST, "/api/v1/certs"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(req(Method::GET, "/api/v1/gateway/certs"), GatewayCerts);
        assert_eq!(req(Method::POST, "/api/v1/gateway/certs"), Unknown);
        assert_eq!(
            req(Method::DELETE, "/api/v1/certs/shop.example.com"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(req(Method::PUT, "/api/v1/nodes/n1"), NodeSelf("n1".into()));
        assert_eq!(
            req(Method::PUT, "/api/v1/nodes/n1/alive"),
            NodeSelf("n1".into())
        );
        assert_eq!(
            req(Method::GET, "/api/v1/nodes/n1/tasks"),
            NodeSelf("n1".into())
        );
        assert_eq!(
            req(Method::GET, "/api/v1/nodes/n1/tasks/t1/secrets"),
            NodeAgent("n1".into())
        );
        assert_eq!(
            req(Method::GET, "/api/v1/secrets"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::PUT, "/api/v1/secrets/db-password"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(
            req(Method::DELETE, "/api/v1/secrets/db-password"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(req(Method::GET, "/api/v1/secrets/db-password"), Unknown);
        assert_eq!(
            req(Method::GET, "/api/v1/volumes"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::DELETE, "/api/v1/volumes/data"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(
            req(Method::PUT, "/api/v1/nodes/n1/drain"),
            Acl(Access::Write, R::Node("n1".into()))
        );
        assert_eq!(
            req(Method::PUT, "/api/v1/tasks/t1/status"),
            TaskOwner("t1".into())
        );
        assert_eq!(
            requirement(&Method::PUT, "/v1/agent/service/register", Some("web")),
            Acl(Access::Write, R::CatalogService("web".into()))
        );
        assert_eq!(
            req(Method::GET, "/v1/health/service/web"),
            Acl(Access::Read, R::CatalogService("web".into()))
        );
        assert_eq!(
            req(Method::GET, "/api/v1/acl/tokens"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(
            req(Method::GET, "/api/v1/registry/peer/blobs/sha256:00"),
            ServersOnly
        );
        assert_eq!(
            req(Method::GET, "/api/v1/registry/endpoints"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::GET, "/api/v1/registry/public"),
            Acl(Access::Read, R::Cluster)
        );
        assert_eq!(
            req(Method::PUT, "/api/v1/registry/public/pub/*"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(
            req(Method::POST, "/api/v1/ca/rotate"),
            Acl(Access::Write, R::Cluster)
        );
        assert_eq!(req(Method::GET, "/ui/services/web"), Public);
        assert_eq!(req(Method::GET, "/api/v1/nothing"), Unknown);
        assert_eq!(req(Method::GET, "/"), Unknown);
    }

    #[test]
    fn a_body_without_a_name_grants_no_name() {
        // With no name found, only a token that may write every service passes.
        assert_eq!(
            req(Method::POST, "/api/v1/services"),
            Acl(Access::Write, R::Service(String::new()))
        );
        assert!(needs_body_name(&Method::POST, "/api/v1/services"));
        assert!(!needs_body_name(&Method::GET, "/api/v1/services"));
    }
}

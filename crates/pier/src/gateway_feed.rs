//! Feeds the gateway's routing table from a pier server's Consul-compatible
//! catalog API with blocking queries (as fabio and Prometheus do): one watch
//! on the service list, one per service on its health. Every answer rebuilds
//! the table and swaps it in; nothing polls. Over HTTP so the same code runs
//! inside `pier dev` and in a standalone `pier gateway` on another machine.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_gateway::table::{CatalogInstance, RouteDefaults, RouteTable};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long one blocking query may wait at the server.
const BLOCKING_WAIT: &str = "5m";
/// Pause after a failed query so a down server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Meta key the feed adds to each instance: the catalog node it runs on (the node gateway's
/// DNS prefers a local instance's pier network address).
pub const NODE_META: &str = "pier.feed.node";

/// Every instance the feed knows (passing or not), for the node's DNS.
pub type Instances = Arc<Vec<CatalogInstance>>;

struct Shared {
    http: pier_net::HttpClient,
    server: String,
    defaults: RouteDefaults,
    /// A node gateway routes `<service>.internal` only: route tags and declared hosts are
    /// for the public gateway.
    internal: bool,
    instances: Mutex<BTreeMap<String, Vec<CatalogInstance>>>,
    /// Route key (host, or path of a host-less route) → the service that owns it
    /// (`/api/v1/catalog/routes`); another service's routes for it are left out.
    owners: Mutex<BTreeMap<String, String>>,
    routes: watch::Sender<Arc<RouteTable>>,
    all: Option<watch::Sender<Instances>>,
}

impl Shared {
    fn publish(&self) {
        let all: Vec<CatalogInstance> = match self.instances.lock() {
            Ok(by_service) => by_service.values().flatten().cloned().collect(),
            Err(_) => return,
        };
        let owners = match self.owners.lock() {
            Ok(o) => o.clone(),
            Err(_) => return,
        };
        let table = build_table(&all, &self.defaults, self.internal, &owners);
        self.routes.send_replace(Arc::new(table));
        if let Some(tx) = &self.all {
            tx.send_replace(Arc::new(all));
        }
    }
}

/// The routing table of the instances; `internal` (a node gateway) keeps only the default
/// host of each service: route tags and declared hosts are the public gateway's.
fn build_table(
    all: &[CatalogInstance],
    defaults: &RouteDefaults,
    internal: bool,
    owners: &BTreeMap<String, String>,
) -> RouteTable {
    if !internal {
        return RouteTable::build_with_owners(all, defaults, owners);
    }
    let stripped: Vec<CatalogInstance> = all
        .iter()
        .map(|i| CatalogInstance {
            tags: Vec::new(),
            meta: BTreeMap::new(),
            ..i.clone()
        })
        .collect();
    RouteTable::build(&stripped, defaults)
}

/// A channel for route tables, starting empty: the gateway holds the receiver.
pub fn channel() -> (
    watch::Sender<Arc<RouteTable>>,
    watch::Receiver<Arc<RouteTable>>,
) {
    watch::channel(Arc::new(RouteTable::empty()))
}

/// Longer than the blocking wait plus Consul's wait/16 jitter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 60);

/// Starts following the catalog of `server` (e.g. `http://127.0.0.1:8500`) with `http`
/// (in a secure cluster: TLS with this process's certificate), publishing every new table
/// into `tx`. The feed runs until the process ends.
pub fn spawn(
    server: String,
    tx: watch::Sender<Arc<RouteTable>>,
    http: pier_net::HttpClient,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        http,
        server: server.trim_end_matches('/').to_string(),
        defaults: RouteDefaults::default(),
        internal: false,
        instances: Mutex::new(BTreeMap::new()),
        owners: Mutex::new(BTreeMap::new()),
        routes: tx,
        all: None,
    });
    tokio::spawn(follow_claims(shared.clone()));
    tokio::spawn(follow_services(shared));
    Ok(())
}

fn internal_defaults() -> RouteDefaults {
    RouteDefaults {
        host_suffix: Some("internal".into()),
        hosts_meta_key: RouteDefaults::default().hosts_meta_key,
    }
}

/// The feed of a node gateway: every service answers on `<service>.internal` only, and every
/// instance is also published into `all` (for the node's DNS).
pub fn spawn_internal(
    server: String,
    tx: watch::Sender<Arc<RouteTable>>,
    all: watch::Sender<Instances>,
    http: pier_net::HttpClient,
) {
    let shared = Arc::new(Shared {
        http,
        server: server.trim_end_matches('/').to_string(),
        defaults: internal_defaults(),
        internal: true,
        instances: Mutex::new(BTreeMap::new()),
        owners: Mutex::new(BTreeMap::new()),
        routes: tx,
        all: Some(all),
    });
    tokio::spawn(follow_services(shared));
}

/// A blocking GET; returns the body and the `X-Consul-Index` of the answer.
async fn blocking_get(shared: &Shared, path: &str, index: u64) -> Result<(Value, u64), String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{path}{sep}index={index}&wait={BLOCKING_WAIT}",
        shared.server
    );
    let resp = shared
        .http
        .get()
        .get(&url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let next = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let body = resp.json::<Value>().await.map_err(|e| e.to_string())?;
    // An index that goes backwards means the server restored state: start over.
    let next = if next < index { 0 } else { next };
    Ok((body, next))
}

async fn follow_services(shared: Arc<Shared>) {
    let mut watchers: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut index = 0;
    loop {
        match blocking_get(&shared, "/v1/catalog/services", index).await {
            Ok((body, next)) => {
                index = next;
                let names: Vec<String> = body
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for name in &names {
                    watchers.entry(name.clone()).or_insert_with(|| {
                        tokio::spawn(follow_service(shared.clone(), name.clone()))
                    });
                }
                let gone: Vec<String> = watchers
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    if let Some(handle) = watchers.remove(&name) {
                        handle.abort();
                    }
                    if let Ok(mut by_service) = shared.instances.lock() {
                        by_service.remove(&name);
                    }
                    shared.publish();
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "gateway: catalog service list unavailable; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Follows who owns each route host (public gateways only: a node gateway routes default
/// hosts, which are never another service's).
async fn follow_claims(shared: Arc<Shared>) {
    let mut index = 0;
    let mut reported = Value::Null;
    loop {
        match blocking_get(&shared, "/api/v1/catalog/routes", index).await {
            Ok((body, next)) => {
                index = next;
                let owners: BTreeMap<String, String> = body["Owners"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                let conflicts = body["Conflicts"].clone();
                if conflicts != reported {
                    if conflicts.as_array().is_some_and(|c| !c.is_empty()) {
                        tracing::warn!(%conflicts, "gateway: routes claimed by more than one service; only their owners get traffic");
                    }
                    reported = conflicts;
                }
                let changed = match shared.owners.lock() {
                    Ok(mut o) if *o != owners => {
                        *o = owners;
                        true
                    }
                    _ => false,
                };
                if changed {
                    shared.publish();
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "gateway: route owners unavailable; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

async fn follow_service(shared: Arc<Shared>, name: String) {
    let path = format!("/v1/health/service/{name}");
    let mut index = 0;
    loop {
        match blocking_get(&shared, &path, index).await {
            Ok((body, next)) => {
                index = next;
                let instances = parse_health(&name, &body);
                if let Ok(mut by_service) = shared.instances.lock() {
                    by_service.insert(name.clone(), instances);
                }
                shared.publish();
            }
            Err(err) => {
                tracing::warn!(service = %name, error = %err, "gateway: health watch failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Turns a `/v1/health/service/:name` answer into gateway instances. An
/// instance passes only when every one of its checks (node checks included)
/// is passing, as Consul's `?passing` means.
fn parse_health(service: &str, body: &Value) -> Vec<CatalogInstance> {
    let Some(entries) = body.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let node = &entry["Node"];
            let svc = &entry["Service"];
            let port = u16::try_from(svc["Port"].as_u64()?).ok()?;
            let address = match svc["Address"].as_str() {
                Some(a) if !a.is_empty() => a.to_string(),
                _ => node["Address"].as_str()?.to_string(),
            };
            let passing = entry["Checks"]
                .as_array()
                .map(|checks| checks.iter().all(|c| c["Status"] == "passing"))
                .unwrap_or(true);
            let strings = |v: &Value| -> BTreeMap<String, String> {
                v.as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut meta = strings(&svc["Meta"]);
            if let Some(n) = node["Node"].as_str() {
                meta.insert(NODE_META.to_string(), n.to_string());
            }
            let zone = meta
                .get("zone")
                .cloned()
                .or_else(|| strings(&node["Meta"]).get("zone").cloned())
                .unwrap_or_default();
            Some(CatalogInstance {
                service: service.to_string(),
                instance_id: svc["ID"].as_str().unwrap_or_default().to_string(),
                address,
                port,
                zone,
                tags: svc["Tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                meta,
                passing,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_gateway::Resolution;

    #[test]
    fn a_node_gateway_routes_service_dot_internal_only() {
        let inst = CatalogInstance {
            service: "api".into(),
            instance_id: "a1".into(),
            address: "127.0.0.1".into(),
            port: 32000,
            tags: vec!["urlprefix-/".into(), "urlprefix-api.example.test/".into()],
            meta: BTreeMap::from([("pier.hosts".to_string(), "other.test".to_string())]),
            passing: true,
            ..Default::default()
        };
        let node = build_table(
            std::slice::from_ref(&inst),
            &internal_defaults(),
            true,
            &BTreeMap::new(),
        );
        assert!(matches!(
            node.resolve("api.internal", "/x"),
            Resolution::Service { .. }
        ));
        for host in [
            "api.localhost",
            "api.example.test",
            "other.test",
            "web.internal",
        ] {
            assert_eq!(node.resolve(host, "/"), Resolution::UnknownHost, "{host}");
        }
        let public = build_table(&[inst], &RouteDefaults::default(), false, &BTreeMap::new());
        assert!(matches!(
            public.resolve("api.example.test", "/"),
            Resolution::Service { .. }
        ));
    }

    #[test]
    fn health_answer_becomes_instances_with_zone_and_verdict() {
        let body = serde_json::json!([
            {"Node": {"Node": "n1", "Address": "127.0.0.1", "Meta": {"zone": "a"}},
             "Service": {"ID": "web-1", "Service": "web", "Tags": ["urlprefix-web.example/"], "Address": "", "Port": 31001, "Meta": {}},
             "Checks": [{"Status": "passing"}, {"Status": "passing"}]},
            {"Node": {"Node": "n2", "Address": "127.0.0.2", "Meta": {"zone": "b"}},
             "Service": {"ID": "web-2", "Service": "web", "Tags": [], "Address": "127.0.0.9", "Port": 31002, "Meta": {}},
             "Checks": [{"Status": "passing"}, {"Status": "critical"}]},
            {"Node": {"Node": "n3", "Address": "127.0.0.3"},
             "Service": {"ID": "bad-port", "Service": "web", "Port": 70000}, "Checks": []}
        ]);
        let got = parse_health("web", &body);
        assert_eq!(got.len(), 2, "an out-of-range port is skipped");
        assert_eq!(got[0].address, "127.0.0.1");
        assert_eq!(got[0].zone, "a");
        assert!(got[0].passing);
        assert_eq!(got[0].tags, vec!["urlprefix-web.example/".to_string()]);
        assert_eq!(
            got[1].address, "127.0.0.9",
            "service address wins over node address"
        );
        assert!(
            !got[1].passing,
            "one critical check makes the instance not passing"
        );
    }
}

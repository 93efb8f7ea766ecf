//! The routing table: which host and path go to which service, and which
//! backends each service has.
//!
//! A [`RouteTable`] is immutable. The catalog adapter builds a new one with
//! the pure function [`RouteTable::build`] whenever the catalog changes and
//! sends it through a `watch` channel; the gateway swaps it in atomically.
//! Invariants established here and relied on by the proxy:
//! - host names are normalised (lower case, no port, no trailing dot);
//! - per host, path routes are ordered longest prefix first, so the first
//!   match is the most specific one;
//! - a (host, prefix) pair belongs to exactly one service (conflicts are
//!   resolved by service name order and reported in [`RouteTable::issues`]);
//! - a service that has instances exists in the table even when none of them
//!   is passing, so the gateway can answer 503 naming it rather than 404.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::host::normalize_host;
use crate::urlprefix::{try_parse_urlprefix_tag, RouteSpec, TagError};

/// One service instance as the catalog knows it: the input of
/// [`RouteTable::build`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogInstance {
    pub service: String,
    pub instance_id: String,
    /// An IP address (host names are not resolved by the gateway).
    pub address: String,
    pub port: u16,
    pub zone: String,
    /// Route tags in fabio's `urlprefix-` form; other tags are ignored.
    pub tags: Vec<String>,
    /// `RouteDefaults::hosts_meta_key` lists extra host names, comma separated.
    pub meta: BTreeMap<String, String>,
    /// The catalog's health verdict; only passing instances get traffic.
    pub passing: bool,
}

/// How instances become routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDefaults {
    /// Every service answers on `<service>.<suffix>` (lower-cased) when set.
    pub host_suffix: Option<String>,
    /// Meta key whose value lists further host names for the service.
    pub hosts_meta_key: String,
}

impl Default for RouteDefaults {
    fn default() -> Self {
        RouteDefaults {
            host_suffix: Some("localhost".to_string()),
            hosts_meta_key: "pier.hosts".to_string(),
        }
    }
}

/// A backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub instance_id: String,
    pub addr: SocketAddr,
    pub zone: String,
    pub passing: bool,
}

/// A service with its routes and backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    name: String,
    routes: Vec<RouteSpec>,
    backends: Vec<Backend>,
}

impl ServiceEntry {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The routes this service won (conflicting ones are left out).
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
    pub fn passing_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.passing)
    }
}

/// Something in the catalog input that could not be turned into routing as
/// asked. The table is still built from everything else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildIssue {
    #[error("instance `{instance_id}` of `{service}`: `{address}` is not an IP address")]
    BadAddress {
        service: String,
        instance_id: String,
        address: String,
    },
    #[error("instance `{instance_id}` of `{service}` has port 0")]
    ZeroPort {
        service: String,
        instance_id: String,
    },
    #[error("instance id `{instance_id}` appears twice in `{service}`; the later one is ignored")]
    DuplicateInstance {
        service: String,
        instance_id: String,
    },
    #[error("service name `{service}` cannot form a host name; it only gets declared routes")]
    NoDefaultHost { service: String },
    #[error("service `{service}`: host `{host}` in meta is not a valid host name")]
    BadDeclaredHost { service: String, host: String },
    #[error("service `{service}`: tag `{tag}`: {error}")]
    BadTag {
        service: String,
        tag: String,
        error: TagError,
    },
    #[error("route {route} of `{service}` is not routed: it belongs to `{owner}`")]
    NotOwner {
        route: String,
        owner: String,
        service: String,
    },
    #[error("route {host}{prefix} is claimed by `{kept}` and `{dropped}`; `{kept}` keeps it")]
    RouteConflict {
        host: String,
        prefix: String,
        kept: String,
        dropped: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PathRoute {
    prefix: String,
    strip: Option<String>,
    service: usize,
    https: HttpsPolicy,
}

/// (host or None for any host, path prefix)
type RouteKey = (Option<String>, String);
/// (service index, strip prefix, HTTPS options) of the route that won a key.
type ClaimedRoute = (usize, Option<String>, HttpsPolicy);

/// What a route asks of HTTPS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpsPolicy {
    /// Plain HTTP is answered 308 to the https URL.
    pub redirect: bool,
    /// `Strict-Transport-Security` on responses over HTTPS.
    pub hsts: bool,
}

/// Whether `service` may route `spec` given the recorded owners; reports when not.
fn owned_by(
    spec: &RouteSpec,
    service: &str,
    owners: &BTreeMap<String, String>,
    issues: &mut Vec<BuildIssue>,
) -> bool {
    let key = spec.host.as_deref().unwrap_or(spec.path_prefix.as_str());
    match owners.get(key) {
        Some(owner) if owner != service => {
            issues.push(BuildIssue::NotOwner {
                route: format!("{}{}", spec.host.as_deref().unwrap_or(""), spec.path_prefix),
                owner: owner.clone(),
                service: service.to_string(),
            });
            false
        }
        _ => true,
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<'a> {
    Service {
        /// Index into [`RouteTable::services`].
        index: usize,
        service: &'a ServiceEntry,
        strip_prefix: Option<&'a str>,
        https: HttpsPolicy,
    },
    /// No service has a route for this host.
    UnknownHost,
    /// The host is known but none of its path prefixes matches.
    NoRoute,
}

/// The immutable routing table. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    services: Vec<ServiceEntry>,
    by_host: HashMap<String, Vec<PathRoute>>,
    any_host: Vec<PathRoute>,
    issues: Vec<BuildIssue>,
}

impl RouteTable {
    pub fn empty() -> Self {
        RouteTable::default()
    }

    /// Builds the table from the catalog's instances. Pure and
    /// deterministic: the same instances in any order give the same table.
    pub fn build(instances: &[CatalogInstance], defaults: &RouteDefaults) -> RouteTable {
        RouteTable::build_with_owners(instances, defaults, &BTreeMap::new())
    }

    /// [`RouteTable::build`] honouring route ownership: `owners` maps a host (or, for a
    /// host-less route, its path prefix) to the service that claimed it first; another
    /// service's routes for it are left out and reported ([`BuildIssue::NotOwner`]). Routes
    /// without a recorded owner fall back to name order, reported as conflicts.
    pub fn build_with_owners(
        instances: &[CatalogInstance],
        defaults: &RouteDefaults,
        owners: &BTreeMap<String, String>,
    ) -> RouteTable {
        let mut issues = Vec::new();
        let mut grouped: BTreeMap<&str, Vec<&CatalogInstance>> = BTreeMap::new();
        for inst in instances {
            grouped.entry(inst.service.as_str()).or_default().push(inst);
        }

        let mut services = Vec::with_capacity(grouped.len());
        // (host or None, prefix) -> (service index, strip)
        let mut claimed: BTreeMap<RouteKey, ClaimedRoute> = BTreeMap::new();

        for (name, mut insts) in grouped {
            insts.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            let index = services.len();
            let mut backends = Vec::with_capacity(insts.len());
            let mut seen_ids = HashSet::new();
            let mut specs: Vec<RouteSpec> = Vec::new();

            if let Some(suffix) = &defaults.host_suffix {
                match normalize_host(&format!("{name}.{suffix}")) {
                    Some(host) if !name.is_empty() && !name.contains('.') => {
                        specs.push(RouteSpec::host(host))
                    }
                    _ => issues.push(BuildIssue::NoDefaultHost {
                        service: name.to_string(),
                    }),
                }
            }

            for inst in insts {
                if !seen_ids.insert(inst.instance_id.as_str()) {
                    issues.push(BuildIssue::DuplicateInstance {
                        service: name.to_string(),
                        instance_id: inst.instance_id.clone(),
                    });
                    continue;
                }
                collect_routes(name, inst, defaults, &mut specs, &mut issues);
                let ip: IpAddr = match inst.address.trim().parse() {
                    Ok(ip) => ip,
                    Err(_) => {
                        issues.push(BuildIssue::BadAddress {
                            service: name.to_string(),
                            instance_id: inst.instance_id.clone(),
                            address: inst.address.clone(),
                        });
                        continue;
                    }
                };
                if inst.port == 0 {
                    issues.push(BuildIssue::ZeroPort {
                        service: name.to_string(),
                        instance_id: inst.instance_id.clone(),
                    });
                    continue;
                }
                backends.push(Backend {
                    instance_id: inst.instance_id.clone(),
                    addr: SocketAddr::new(ip, inst.port),
                    zone: inst.zone.clone(),
                    passing: inst.passing,
                });
            }

            // Instances of one service may disagree on tags mid-deploy; the
            // union is routed, first (sorted) spec wins for a given key.
            specs.sort();
            // A route's HTTPS options hold when any instance (or the route tag beside the
            // default host) asks for them.
            specs.dedup_by(|later, kept| {
                let same = later.host == kept.host && later.path_prefix == kept.path_prefix;
                if same {
                    kept.redirect_https |= later.redirect_https;
                    kept.hsts |= later.hsts;
                }
                same
            });
            specs.retain(|spec| owned_by(spec, name, owners, &mut issues));
            let mut won = Vec::with_capacity(specs.len());
            for spec in specs {
                let key = (spec.host.clone(), spec.path_prefix.clone());
                match claimed.get(&key) {
                    Some((owner, _, _)) => {
                        let owner: &ServiceEntry = &services[*owner];
                        issues.push(BuildIssue::RouteConflict {
                            host: spec.host.clone().unwrap_or_else(|| "*".to_string()),
                            prefix: spec.path_prefix.clone(),
                            kept: owner.name.clone(),
                            dropped: name.to_string(),
                        });
                    }
                    None => {
                        let https = HttpsPolicy {
                            redirect: spec.redirect_https,
                            hsts: spec.hsts,
                        };
                        claimed.insert(key, (index, spec.strip_prefix.clone(), https));
                        won.push(spec);
                    }
                }
            }
            services.push(ServiceEntry {
                name: name.to_string(),
                routes: won,
                backends,
            });
        }

        let mut by_host: HashMap<String, Vec<PathRoute>> = HashMap::new();
        let mut any_host = Vec::new();
        for ((host, prefix), (service, strip, https)) in claimed {
            let route = PathRoute {
                prefix,
                strip,
                service,
                https,
            };
            match host {
                Some(h) => by_host.entry(h).or_default().push(route),
                None => any_host.push(route),
            }
        }
        for routes in by_host.values_mut().chain(std::iter::once(&mut any_host)) {
            routes.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(a.prefix.cmp(&b.prefix))
            });
        }

        RouteTable {
            services,
            by_host,
            any_host,
            issues,
        }
    }

    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.services[i])
    }

    /// What could not be routed as asked, for the adapter to log.
    pub fn issues(&self) -> &[BuildIssue] {
        &self.issues
    }

    /// Routes a normalised host and a request path. Host-specific routes win
    /// over host-less (`urlprefix-/path`) ones.
    pub fn resolve(&self, host: &str, path: &str) -> Resolution<'_> {
        let host_routes = self.by_host.get(host);
        let found = host_routes
            .and_then(|routes| first_match(routes, path))
            .or_else(|| first_match(&self.any_host, path));
        match found {
            Some(route) => Resolution::Service {
                index: route.service,
                service: &self.services[route.service],
                strip_prefix: route.strip.as_deref(),
                https: route.https,
            },
            None if host_routes.is_some() || !self.any_host.is_empty() => Resolution::NoRoute,
            None => Resolution::UnknownHost,
        }
    }

    /// All host names with at least one route, sorted.
    pub fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = self.by_host.keys().map(String::as_str).collect();
        hosts.sort_unstable();
        hosts
    }
}

fn collect_routes(
    service: &str,
    inst: &CatalogInstance,
    defaults: &RouteDefaults,
    specs: &mut Vec<RouteSpec>,
    issues: &mut Vec<BuildIssue>,
) {
    if let Some(hosts) = inst.meta.get(&defaults.hosts_meta_key) {
        for raw in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match normalize_host(raw) {
                Some(h) => specs.push(RouteSpec::host(h)),
                None => issues.push(BuildIssue::BadDeclaredHost {
                    service: service.to_string(),
                    host: raw.to_string(),
                }),
            }
        }
    }
    for tag in &inst.tags {
        match try_parse_urlprefix_tag(tag) {
            Ok(Some(spec)) => specs.push(spec),
            Ok(None) => {}
            Err(error) => issues.push(BuildIssue::BadTag {
                service: service.to_string(),
                tag: tag.clone(),
                error,
            }),
        }
    }
}

fn first_match<'a>(routes: &'a [PathRoute], path: &str) -> Option<&'a PathRoute> {
    routes.iter().find(|r| prefix_matches(&r.prefix, path))
}

/// `/api` matches `/api`, `/api/` and `/api/x` but not `/apix`; a prefix
/// ending in `/` matches everything below it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Removes `strip` from the front of `path` when it matches on a segment
/// boundary; the result always starts with `/`.
pub(crate) fn strip_path<'a>(path: &'a str, strip: &str) -> &'a str {
    if prefix_matches(strip, path) || (path.starts_with(strip) && strip.ends_with('/')) {
        let rest = &path[strip.len()..];
        if rest.is_empty() {
            "/"
        } else if rest.starts_with('/') {
            rest
        } else {
            // `strip` ended in `/`, so its last byte is the slash we need.
            &path[strip.len() - 1..]
        }
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(service: &str, id: &str, port: u16, zone: &str, passing: bool) -> CatalogInstance {
        CatalogInstance {
            service: service.into(),
            instance_id: id.into(),
            address: "127.0.0.1".into(),
            port,
            zone: zone.into(),
            tags: vec![],
            meta: BTreeMap::new(),
            passing,
        }
    }

    fn routed<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<(&'a str, Option<&'a str>)> {
        match t.resolve(host, path) {
            Resolution::Service {
                service,
                strip_prefix,
                ..
            } => Some((service.name(), strip_prefix)),
            _ => None,
        }
    }

    #[test]
    fn default_hosts_and_backends() {
        let t = RouteTable::build(
            &[
                inst("web", "w2", 8002, "b", false),
                inst("web", "w1", 8001, "a", true),
                inst("Api", "a1", 9001, "a", true),
            ],
            &RouteDefaults::default(),
        );
        assert!(t.issues().is_empty(), "{:?}", t.issues());
        assert_eq!(routed(&t, "web.localhost", "/x"), Some(("web", None)));
        assert_eq!(routed(&t, "api.localhost", "/"), Some(("Api", None)));
        assert_eq!(t.resolve("nope.localhost", "/"), Resolution::UnknownHost);
        let web = t.service("web").unwrap();
        assert_eq!(web.backends().len(), 2);
        assert_eq!(web.backends()[0].instance_id, "w1");
        assert_eq!(web.passing_backends().count(), 1);
        assert_eq!(web.backends()[0].addr, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(t.hosts(), vec!["api.localhost", "web.localhost"]);
    }

    #[test]
    fn a_recorded_owner_keeps_its_host_whatever_the_names() {
        // "aaa" sorts first and would win by name order; "zzz" owns the host.
        let mut early = inst("zzz", "z1", 9001, "a", true);
        early.tags = vec!["urlprefix-shop.example.com".into()];
        let mut late = inst("aaa", "a1", 9002, "a", true);
        late.tags = vec![
            "urlprefix-shop.example.com/api".into(),
            "urlprefix-/static".into(),
        ];
        let all = [early, late];
        let by_name = RouteTable::build(&all, &RouteDefaults::default());
        assert_eq!(
            routed(&by_name, "shop.example.com", "/api"),
            Some(("aaa", None))
        );
        let owners = BTreeMap::from([
            ("shop.example.com".to_string(), "zzz".to_string()),
            ("/static".to_string(), "zzz".to_string()),
        ]);
        let t = RouteTable::build_with_owners(&all, &RouteDefaults::default(), &owners);
        assert_eq!(routed(&t, "shop.example.com", "/api"), Some(("zzz", None)));
        assert_eq!(routed(&t, "aaa.localhost", "/"), Some(("aaa", None)));
        assert_eq!(routed(&t, "other.example", "/static"), None);
        let refused: Vec<&BuildIssue> = t
            .issues()
            .iter()
            .filter(|i| matches!(i, BuildIssue::NotOwner { .. }))
            .collect();
        assert_eq!(refused.len(), 2, "{:?}", t.issues());
        assert!(
            refused[0].to_string().contains("belongs to `zzz`"),
            "{}",
            refused[0]
        );
    }

    #[test]
    fn order_does_not_matter() {
        let mut a = vec![
            inst("web", "w1", 8001, "a", true),
            inst("web", "w2", 8002, "b", true),
            inst("db", "d1", 5432, "a", true),
        ];
        a[0].tags = vec!["urlprefix-/web".into()];
        let t1 = RouteTable::build(&a, &RouteDefaults::default());
        a.reverse();
        let t2 = RouteTable::build(&a, &RouteDefaults::default());
        assert_eq!(t1, t2);
    }

    #[test]
    fn tags_meta_hosts_and_longest_prefix() {
        let mut api = inst("api", "a1", 9001, "a", true);
        api.tags = vec![
            "urlprefix-shop.example.com/api strip=/api".into(),
            "urlprefix-:9999 proto=tcp".into(),
            "unrelated".into(),
        ];
        let mut shop = inst("shop", "s1", 9002, "a", true);
        shop.meta
            .insert("pier.hosts".into(), "Shop.Example.com, bad host".into());
        let t = RouteTable::build(&[api, shop], &RouteDefaults::default());
        assert_eq!(
            routed(&t, "shop.example.com", "/api/v1"),
            Some(("api", Some("/api")))
        );
        assert_eq!(
            routed(&t, "shop.example.com", "/api"),
            Some(("api", Some("/api")))
        );
        assert_eq!(
            routed(&t, "shop.example.com", "/apix"),
            Some(("shop", None))
        );
        assert_eq!(routed(&t, "shop.example.com", "/"), Some(("shop", None)));
        assert_eq!(t.issues().len(), 2, "{:?}", t.issues());
        assert!(matches!(t.issues()[0], BuildIssue::BadTag { .. }));
        assert!(matches!(t.issues()[1], BuildIssue::BadDeclaredHost { .. }));
    }

    #[test]
    fn hostless_routes_and_no_route() {
        let mut api = inst("api", "a1", 9001, "a", true);
        api.tags = vec!["urlprefix-/api".into()];
        let mut only = inst("only", "o1", 9003, "a", true);
        only.tags = vec!["urlprefix-only.example.com/v2".into()];
        let t = RouteTable::build(
            &[api, only],
            &RouteDefaults {
                host_suffix: None,
                ..Default::default()
            },
        );
        assert_eq!(
            routed(&t, "anything.example", "/api/x"),
            Some(("api", None))
        );
        assert_eq!(
            routed(&t, "only.example.com", "/v2/a"),
            Some(("only", None))
        );
        assert_eq!(routed(&t, "only.example.com", "/api"), Some(("api", None)));
        assert_eq!(t.resolve("only.example.com", "/v3"), Resolution::NoRoute);
    }

    #[test]
    fn conflicts_go_to_first_service_by_name() {
        let mut a = inst("alpha", "a1", 9001, "a", true);
        a.tags = vec!["urlprefix-x.example/".into()];
        let mut b = inst("beta", "b1", 9002, "a", true);
        b.tags = vec!["urlprefix-x.example/".into()];
        let t = RouteTable::build(&[b, a], &RouteDefaults::default());
        assert_eq!(routed(&t, "x.example", "/"), Some(("alpha", None)));
        assert_eq!(
            t.issues(),
            &[BuildIssue::RouteConflict {
                host: "x.example".into(),
                prefix: "/".into(),
                kept: "alpha".into(),
                dropped: "beta".into()
            }]
        );
    }

    #[test]
    fn bad_instances_are_reported_and_service_kept() {
        let mut bad = inst("web", "w1", 8001, "a", true);
        bad.address = "web-1.internal".into();
        let zero = inst("web", "w2", 0, "a", true);
        let dup = inst("web", "w2", 8003, "a", true);
        let t = RouteTable::build(&[bad, zero, dup], &RouteDefaults::default());
        assert_eq!(t.service("web").unwrap().backends().len(), 0);
        assert_eq!(routed(&t, "web.localhost", "/"), Some(("web", None)));
        assert_eq!(t.issues().len(), 3, "{:?}", t.issues());
    }

    #[test]
    fn strip_paths() {
        assert_eq!(strip_path("/api/v1?x", "/api"), "/v1?x");
        assert_eq!(strip_path("/api", "/api"), "/");
        assert_eq!(strip_path("/apix", "/api"), "/apix");
        assert_eq!(strip_path("/api/v1", "/api/"), "/v1");
        assert_eq!(strip_path("/other", "/api"), "/other");
        assert!(prefix_matches("/", "/anything"));
        assert!(!prefix_matches("/a", "/b"));
    }
}

//! Route ownership: a host name (or, for a host-less `urlprefix-/path` route, the path) belongs
//! to the first service that claims it. Claims live in the table [`ROUTE_CLAIMS`]
//! (`key → service`), written with compare-and-set guards in the same transaction as the
//! registration that makes them, so two servers racing for a host cannot both win; a later
//! claim by another service is refused with [`CatalogError::Conflict`] (409).
//!
//! Claims follow the instances level-triggered: [`crate::Catalog::reconcile_route_claims`]
//! (run by the leader) releases a claim whose owner no longer has an instance (or pier
//! service) asking for it, hands an unclaimed key to its earliest claimant, and reports
//! conflicts it cannot refuse (instances stored before the claim existed).

use std::collections::{BTreeMap, BTreeSet};

use pier_store::Table;

use crate::error::CatalogError;

/// `key → owning service`.
pub const ROUTE_CLAIMS: Table = Table::from_static("catalog_route_claims");

/// The meta key listing extra host names of an instance (comma separated), as the gateway
/// reads it.
pub const HOSTS_META_KEY: &str = "pier.hosts";

/// Every service answers on `<service>.localhost` at the gateway: that host is reserved for it.
pub const DEFAULT_HOST_SUFFIX: &str = "localhost";

const TAG_PREFIX: &str = "urlprefix-";

/// A host as the gateway compares it: lower case, no port, no trailing dot. None when empty.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let name = if raw.starts_with('[') {
        // An IPv6 literal, maybe with a port.
        raw.find(']').map(|end| &raw[..=end])?
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The claim key of one `urlprefix-` tag: its host, or its path for a host-less route.
fn tag_key(tag: &str) -> Option<String> {
    let rest = tag.trim().strip_prefix(TAG_PREFIX)?;
    let route = rest.split_ascii_whitespace().next()?;
    match route.find('/') {
        Some(0) => Some(route.to_string()),
        Some(i) => normalize_host(&route[..i]),
        None => normalize_host(route),
    }
}

/// Every key an instance with these tags and meta claims.
pub fn route_keys(tags: &[String], meta: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = tags.iter().filter_map(|t| tag_key(t)).collect();
    if let Some(hosts) = meta.get(HOSTS_META_KEY) {
        keys.extend(hosts.split(',').filter_map(normalize_host));
    }
    keys
}

/// The service a default host (`<service>.localhost`) is reserved for.
pub fn reserved_for(key: &str) -> Option<&str> {
    let name = key.strip_suffix(DEFAULT_HOST_SUFFIX)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// Why `service` may not have `key`, given its current owner.
pub fn refusal(service: &str, key: &str, owner: Option<&str>) -> Option<CatalogError> {
    if let Some(reserved) = reserved_for(key).filter(|r| *r != service) {
        return Some(CatalogError::Conflict(format!(
            "route {key:?} is the default host of service {reserved:?}; service {service:?} may not claim it"
        )));
    }
    match owner {
        Some(owner) if owner != service => Some(CatalogError::Conflict(format!(
            "route {key:?} belongs to service {owner:?}; service {service:?} may not claim it \
             until {owner:?} has no instance left"
        ))),
        _ => None,
    }
}

/// The stored claim of each key a registration asks for: `(key, Some((owner, modify index)))`.
pub type StoredClaims = Vec<(String, Option<(String, u64)>)>;

/// The guarded operations that make `service` the owner of every key in `stored` (claims it
/// holds already are only checked), and whether any claim is new. Refused when another
/// service owns a key or it is another service's default host.
pub fn claim_ops(
    service: &str,
    stored: &StoredClaims,
) -> Result<(Vec<pier_store::Op>, bool), CatalogError> {
    use pier_store::Op;
    let mut ops = Vec::with_capacity(stored.len());
    let mut granted = false;
    for (key, claim) in stored {
        if let Some(err) = refusal(service, key, claim.as_ref().map(|(o, _)| o.as_str())) {
            return Err(err);
        }
        match claim {
            Some((_, index)) => ops.push(Op::check(ROUTE_CLAIMS, key.clone(), *index)),
            None => {
                granted = true;
                ops.push(Op::put_cas(
                    ROUTE_CLAIMS,
                    key.clone(),
                    service.as_bytes().to_vec(),
                    0,
                ));
            }
        }
    }
    Ok((ops, granted))
}

/// Reads the stored claims of `keys`.
pub fn read_claims<'a>(
    v: &pier_store::StateView<'_>,
    keys: impl IntoIterator<Item = &'a String>,
) -> StoredClaims {
    keys.into_iter()
        .map(|k| {
            let claim = v.get(ROUTE_CLAIMS, k).map(|e| {
                (
                    String::from_utf8_lossy(&e.value).into_owned(),
                    e.modify_index,
                )
            });
            (k.clone(), claim)
        })
        .collect()
}

/// One key claimed by more than one service: `owner` routes it, `others` are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    pub key: String,
    pub owner: String,
    pub others: Vec<String>,
}

/// Who asks for a key: a service and the create index of its earliest asking instance.
pub type Claimants = BTreeMap<String, BTreeMap<String, u64>>;

/// What a reconcile pass should write: claims to drop (key, modify index), claims to make
/// (key, service), and the conflicts it found. Pure.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimPlan {
    pub release: Vec<(String, u64)>,
    pub grant: Vec<(String, String)>,
    pub conflicts: Vec<RouteConflict>,
}

/// Plans a reconcile pass from the stored claims (`key → (owner, modify index)`) and who asks
/// for each key now.
pub fn plan_claims(claims: &BTreeMap<String, (String, u64)>, wanted: &Claimants) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    for (key, (owner, index)) in claims {
        let owner_still_asks = wanted.get(key).is_some_and(|c| c.contains_key(owner));
        if !owner_still_asks {
            plan.release.push((key.clone(), *index));
        }
    }
    for (key, claimants) in wanted {
        let current = claims
            .get(key)
            .map(|(o, _)| o.as_str())
            .filter(|o| claimants.contains_key(*o));
        let owner = match current {
            Some(o) => o.to_string(),
            None => {
                // The earliest claimant that the key is not reserved against.
                let Some((first, _)) = claimants
                    .iter()
                    .filter(|(s, _)| reserved_for(key).is_none_or(|r| r == s.as_str()))
                    .min_by_key(|(s, idx)| (**idx, (*s).clone()))
                else {
                    continue;
                };
                plan.grant.push((key.clone(), first.clone()));
                first.clone()
            }
        };
        let others: Vec<String> = claimants.keys().filter(|s| **s != owner).cloned().collect();
        if !others.is_empty() {
            plan.conflicts.push(RouteConflict {
                key: key.clone(),
                owner,
                others,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn keys_come_from_tags_and_meta() {
        let meta = BTreeMap::from([(
            HOSTS_META_KEY.to_string(),
            "A.example.com, b.example.com.,".to_string(),
        )]);
        let keys = route_keys(
            &s(&[
                "urlprefix-Shop.Example.com:8080/api strip=/api",
                "urlprefix-/static",
                "urlprefix-bare.example.com",
                "rev-3",
            ]),
            &meta,
        );
        let want: BTreeSet<String> = s(&[
            "/static",
            "a.example.com",
            "b.example.com",
            "bare.example.com",
            "shop.example.com",
        ])
        .into_iter()
        .collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn default_hosts_are_reserved_and_owners_keep_their_keys() {
        assert_eq!(reserved_for("web.localhost"), Some("web"));
        assert_eq!(reserved_for("a.b.localhost"), None);
        assert_eq!(reserved_for("localhost"), None);
        assert!(refusal("evil", "web.localhost", None).is_some());
        assert!(refusal("web", "web.localhost", None).is_none());
        assert!(refusal("web", "shop.example.com", Some("web")).is_none());
        let err = refusal("api", "shop.example.com", Some("web")).unwrap();
        assert!(matches!(err, CatalogError::Conflict(_)));
        assert!(
            err.to_string().contains("belongs to service \"web\""),
            "{err}"
        );
    }

    #[test]
    fn plans_release_grant_and_report_by_claim_order_not_name() {
        let claims = BTreeMap::from([
            ("gone.example".to_string(), ("old".to_string(), 7)),
            ("kept.example".to_string(), ("zeta".to_string(), 9)),
        ]);
        let wanted: Claimants = BTreeMap::from([
            (
                "kept.example".to_string(),
                BTreeMap::from([("alpha".to_string(), 1), ("zeta".to_string(), 5)]),
            ),
            (
                "new.example".to_string(),
                BTreeMap::from([("aaa".to_string(), 30), ("zzz".to_string(), 20)]),
            ),
            (
                "web.localhost".to_string(),
                BTreeMap::from([("evil".to_string(), 1), ("web".to_string(), 2)]),
            ),
        ]);
        let plan = plan_claims(&claims, &wanted);
        assert_eq!(plan.release, vec![("gone.example".to_string(), 7)]);
        assert_eq!(
            plan.grant,
            vec![
                ("new.example".to_string(), "zzz".to_string()),
                ("web.localhost".to_string(), "web".to_string()),
            ]
        );
        assert_eq!(plan.conflicts.len(), 3);
        assert_eq!(plan.conflicts[0].owner, "zeta", "the stored owner keeps it");
        assert_eq!(plan.conflicts[0].others, s(&["alpha"]));
        assert_eq!(
            plan.conflicts[1].owner, "zzz",
            "the earliest claim wins, not the name"
        );
    }
}

/// What [`crate::Catalog::route_claims`] answers: every claim and the conflicts of the last
/// look, at a store index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteClaims {
    pub index: u64,
    /// `key → owning service`.
    pub owners: BTreeMap<String, String>,
    pub conflicts: Vec<RouteConflict>,
}

/// Reads every claim and who asks for each key (instances in the catalog plus `extra`:
/// `(key, service, create index)` for services declared elsewhere, e.g. pier services).
fn read_all(
    v: &pier_store::StateView<'_>,
    extra: &[(String, String, u64)],
) -> (BTreeMap<String, (String, u64)>, Claimants, u64) {
    let claims: BTreeMap<String, (String, u64)> = v
        .range_prefix(ROUTE_CLAIMS, "")
        .map(|(k, e)| {
            let owner = String::from_utf8_lossy(&e.value).into_owned();
            (k.to_string(), (owner, e.modify_index))
        })
        .collect();
    let mut wanted: Claimants = BTreeMap::new();
    let mut ask = |key: String, service: &str, index: u64| {
        let slot = wanted
            .entry(key)
            .or_default()
            .entry(service.to_string())
            .or_insert(index);
        *slot = (*slot).min(index);
    };
    for (k, e) in v.range_prefix(pier_store::Table::SERVICES, "") {
        let Ok(inst) = crate::records::decode_instance(k, e) else {
            continue;
        };
        for key in route_keys(&inst.tags, &inst.meta) {
            ask(key, &inst.service, inst.create_index);
        }
    }
    for (key, service, index) in extra {
        ask(key.clone(), service, *index);
    }
    let index = v.index_of(&watch_keys());
    (claims, wanted, index)
}

/// What the claims and their conflicts depend on.
fn watch_keys() -> [pier_store::WatchKey; 2] {
    [
        pier_store::WatchKey::prefix(ROUTE_CLAIMS, ""),
        pier_store::WatchKey::prefix(pier_store::Table::SERVICES, ""),
    ]
}

impl crate::Catalog {
    /// Claims `keys` for `service` (a pier service's route at deploy), refused with
    /// [`CatalogError::Conflict`] when another service owns one. Guarded: of two servers
    /// racing for a key, one write fails its guard and is retried against the winner.
    pub async fn claim_routes(
        &self,
        service: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(), CatalogError> {
        for _ in 0..8 {
            let stored = self
                .store()
                .read(pier_store::Consistency::Default, |v| read_claims(v, keys))
                .await?;
            let (ops, granted) = claim_ops(service, &stored)?;
            if !granted {
                return Ok(());
            }
            let txn = ops
                .into_iter()
                .fold(pier_store::Txn::new(), |t, op| t.with(op));
            if self.store().write(txn).await?.applied {
                return Ok(());
            }
        }
        Err(CatalogError::Conflict(format!(
            "the routes of service {service:?} are being claimed concurrently; retry"
        )))
    }

    /// Every claim, and the conflicts among what instances ask for now; a blocking query
    /// over the claims and the instances.
    pub async fn route_claims(
        &self,
        opts: &crate::QueryOptions,
    ) -> Result<crate::model::Versioned<RouteClaims>, CatalogError> {
        crate::blocking::blocking_query(self.store(), opts, |v| {
            let (claims, wanted, index) = read_all(v, &[]);
            let plan = plan_claims(&claims, &wanted);
            let value = RouteClaims {
                index,
                owners: claims.into_iter().map(|(k, (o, _))| (k, o)).collect(),
                conflicts: plan.conflicts,
            };
            Ok((value, watch_keys().to_vec()))
        })
        .await
    }

    /// One level-triggered pass (the leader runs it on every change): releases claims whose
    /// owner asks no more, grants unclaimed keys to their earliest claimant, and returns the
    /// conflicts it could not refuse. Every write is guarded by what the pass read.
    pub async fn reconcile_route_claims(
        &self,
        extra: &[(String, String, u64)],
    ) -> Result<Vec<RouteConflict>, CatalogError> {
        use pier_store::{Op, Txn};
        let (claims, wanted, _) = self
            .store()
            .read(pier_store::Consistency::Default, |v| read_all(v, extra))
            .await?;
        let plan = plan_claims(&claims, &wanted);
        // One transaction per key: a guard that fails skips only that key until the next pass.
        for (key, index) in &plan.release {
            let txn = Txn::single(Op::Delete {
                table: ROUTE_CLAIMS,
                key: key.clone(),
                cas: Some(*index),
            });
            if self.store().write(txn).await?.applied {
                tracing::info!(route = %key, "route claim released: its owner has no instance left");
            }
        }
        for (key, service) in &plan.grant {
            let txn = Txn::single(Op::put_cas(
                ROUTE_CLAIMS,
                key.clone(),
                service.as_bytes().to_vec(),
                0,
            ));
            if self.store().write(txn).await?.applied {
                tracing::info!(route = %key, %service, "route claimed");
            }
        }
        Ok(plan.conflicts)
    }
}

//! API tokens and their policies: one decision, [`allows`], for every endpoint.
//!
//! A token is an accessor (public: logs, audit, `pier token ls`) and a secret (the credential;
//! the store keeps only its SHA-256). Deny by default: a request is allowed only if one of the
//! token's policies grants that access to that resource.
//!
//! Policies, as written on the command line (`pier acl token create --policy ...`):
//! `management`, `read`, `deploy:web*,api`, `pipeline:web`, `registry:pull:team/*`,
//! `registry:push:team/*`, `kv:read:app/`, `kv:write:app/`, `catalog:register:web*`.
//! A name pattern ending in `*` is a prefix, `*` alone matches everything, anything else is
//! exact; KV patterns are always key prefixes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SecurityError;

/// What a request wants to do to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// An orchestrator service: its revisions, deployments, tasks, logs.
    Service(&'a str),
    Pipeline(&'a str),
    /// A registry repository.
    Repository(&'a str),
    /// A KV key.
    Key(&'a str),
    /// A Consul catalog service (register, deregister, checks).
    CatalogService(&'a str),
    /// A node (agent): drain, remove, its catalog entry.
    Node(&'a str),
    /// The cluster itself: members, snapshots, CA, tokens, ACLs, the audit log.
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Policy {
    /// Everything.
    Management,
    /// Every read (secret values are never returned to anyone).
    Read,
    Deploy {
        services: Vec<String>,
    },
    Pipeline {
        pipelines: Vec<String>,
    },
    RegistryPull {
        repositories: Vec<String>,
    },
    RegistryPush {
        repositories: Vec<String>,
    },
    KvRead {
        prefixes: Vec<String>,
    },
    KvWrite {
        prefixes: Vec<String>,
    },
    CatalogRegister {
        services: Vec<String>,
    },
}

/// Whether `name` matches `pattern`: the name itself, or a prefix when it ends in `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, name))
}

impl Policy {
    /// Whether this policy alone grants `access` to `resource`.
    pub fn grants(&self, access: Access, resource: Resource<'_>) -> bool {
        use Resource as R;
        match self {
            Policy::Management => true,
            Policy::Read => access == Access::Read,
            Policy::Deploy { services } => {
                matches!(resource, R::Service(s) if any_matches(services, s))
            }
            Policy::Pipeline { pipelines } => {
                matches!(resource, R::Pipeline(p) if any_matches(pipelines, p))
            }
            Policy::RegistryPull { repositories } => {
                access == Access::Read
                    && matches!(resource, R::Repository(r) if any_matches(repositories, r))
            }
            Policy::RegistryPush { repositories } => {
                matches!(resource, R::Repository(r) if any_matches(repositories, r))
            }
            Policy::KvRead { prefixes } => {
                access == Access::Read
                    && matches!(resource, R::Key(k) if prefixes.iter().any(|p| k.starts_with(p.trim_end_matches('*'))))
            }
            Policy::KvWrite { prefixes } => {
                matches!(resource, R::Key(k) if prefixes.iter().any(|p| k.starts_with(p.trim_end_matches('*'))))
            }
            Policy::CatalogRegister { services } => {
                matches!(resource, R::CatalogService(s) if any_matches(services, s))
            }
        }
    }

    /// Parses the command-line form (see the module docs).
    pub fn parse(text: &str) -> Result<Policy, SecurityError> {
        let text = text.trim();
        let list = |rest: &str| -> Result<Vec<String>, SecurityError> {
            let items: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if items.is_empty() {
                return Err(SecurityError::Policy(format!(
                    "{text:?} names nothing; add names or patterns after the colon"
                )));
            }
            Ok(items)
        };
        let policy = match text.split_once(':') {
            None if text == "management" => Policy::Management,
            None if text == "read" => Policy::Read,
            Some(("deploy", rest)) => Policy::Deploy { services: list(rest)? },
            Some(("pipeline", rest)) => Policy::Pipeline { pipelines: list(rest)? },
            Some(("registry", rest)) => match rest.split_once(':') {
                Some(("pull", r)) => Policy::RegistryPull { repositories: list(r)? },
                Some(("push", r)) => Policy::RegistryPush { repositories: list(r)? },
                _ => return Err(SecurityError::Policy(format!("{text:?}: use registry:pull:PATTERNS or registry:push:PATTERNS"))),
            },
            Some(("kv", rest)) => match rest.split_once(':') {
                Some(("read", r)) => Policy::KvRead { prefixes: list(r)? },
                Some(("write", r)) => Policy::KvWrite { prefixes: list(r)? },
                _ => return Err(SecurityError::Policy(format!("{text:?}: use kv:read:PREFIXES or kv:write:PREFIXES"))),
            },
            Some(("catalog", rest)) => match rest.split_once(':') {
                Some(("register", r)) => Policy::CatalogRegister { services: list(r)? },
                _ => return Err(SecurityError::Policy(format!("{text:?}: use catalog:register:PATTERNS"))),
            },
            _ => {
                return Err(SecurityError::Policy(format!(
                    "unknown policy {text:?}; one of management, read, deploy:P, pipeline:P, registry:pull:P, registry:push:P, kv:read:P, kv:write:P, catalog:register:P"
                )))
            }
        };
        Ok(policy)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Management => f.write_str("management"),
            Policy::Read => f.write_str("read"),
            Policy::Deploy { services } => write!(f, "deploy:{}", services.join(",")),
            Policy::Pipeline { pipelines } => write!(f, "pipeline:{}", pipelines.join(",")),
            Policy::RegistryPull { repositories } => {
                write!(f, "registry:pull:{}", repositories.join(","))
            }
            Policy::RegistryPush { repositories } => {
                write!(f, "registry:push:{}", repositories.join(","))
            }
            Policy::KvRead { prefixes } => write!(f, "kv:read:{}", prefixes.join(",")),
            Policy::KvWrite { prefixes } => write!(f, "kv:write:{}", prefixes.join(",")),
            Policy::CatalogRegister { services } => {
                write!(f, "catalog:register:{}", services.join(","))
            }
        }
    }
}

/// Deny by default: allowed only if some policy grants it.
pub fn allows(policies: &[Policy], access: Access, resource: Resource<'_>) -> bool {
    policies.iter().any(|p| p.grants(access, resource))
}

/// A token as the store keeps it: the secret only as its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id: shown in listings and the audit log, used to revoke.
    pub accessor: String,
    /// SHA-256 of the secret, hex (see [`crate::token::hash_secret`]).
    pub secret_hash: String,
    pub description: String,
    pub policies: Vec<Policy>,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl TokenRecord {
    /// A new token: returns the secret (shown once, to the caller) and the record to store.
    pub fn create(
        description: impl Into<String>,
        policies: Vec<Policy>,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> (String, TokenRecord) {
        let secret = crate::token::generate_secret();
        let record = TokenRecord {
            accessor: uuid::Uuid::new_v4().to_string(),
            secret_hash: crate::token::hash_secret(&secret),
            description: description.into(),
            policies,
            created_at_ms: now_ms,
            expires_at_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
        };
        (secret, record)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    pub fn allows(&self, access: Access, resource: Resource<'_>) -> bool {
        allows(&self.policies, access, resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;
    use Resource as R;

    fn p(text: &str) -> Policy {
        Policy::parse(text).unwrap()
    }

    #[test]
    fn deny_by_default_and_each_policy_grants_only_its_scope() {
        assert!(!allows(&[], Read, R::Service("web")));
        assert!(allows(&[p("management")], Write, R::Cluster));
        let read = [p("read")];
        assert!(allows(&read, Read, R::Service("web")) && allows(&read, Read, R::Cluster));
        assert!(!allows(&read, Write, R::Service("web")));
        let deploy = [p("deploy:web*")];
        assert!(allows(&deploy, Write, R::Service("web")));
        assert!(allows(&deploy, Write, R::Service("web-admin")));
        assert!(!allows(&deploy, Write, R::Service("api")));
        assert!(!allows(&deploy, Write, R::Pipeline("web")));
        let exact = [p("deploy:web")];
        assert!(!allows(&exact, Write, R::Service("web2")));
        let pull = [p("registry:pull:team/*")];
        assert!(allows(&pull, Read, R::Repository("team/app")));
        assert!(!allows(&pull, Write, R::Repository("team/app")));
        let push = [p("registry:push:team/*")];
        assert!(allows(&push, Write, R::Repository("team/app")));
        assert!(!allows(&push, Write, R::Repository("other/app")));
        let kv = [p("kv:read:app/"), p("kv:write:app/cache/")];
        assert!(allows(&kv, Read, R::Key("app/x")));
        assert!(!allows(&kv, Write, R::Key("app/x")));
        assert!(allows(&kv, Write, R::Key("app/cache/1")));
        assert!(!allows(&kv, Read, R::Key("other")));
        let cat = [p("catalog:register:web")];
        assert!(allows(&cat, Write, R::CatalogService("web")));
        assert!(!allows(&cat, Write, R::CatalogService("api")));
        assert!(allows(&[p("deploy:*")], Write, R::Service("anything")));
    }

    #[test]
    fn policies_round_trip_and_bad_ones_are_refused() {
        for text in [
            "management",
            "read",
            "deploy:web*,api",
            "pipeline:web",
            "registry:pull:team/*",
            "registry:push:team/*",
            "kv:read:app/",
            "kv:write:app/",
            "catalog:register:web*",
        ] {
            assert_eq!(p(text).to_string(), text);
            let json = serde_json::to_string(&p(text)).unwrap();
            assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p(text));
        }
        for bad in [
            "",
            "admin",
            "deploy:",
            "registry:web",
            "kv:x:y",
            "catalog:read:x",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_store_only_the_hash_and_expire() {
        let (secret, rec) = TokenRecord::create("ci", vec![p("read")], Some(1_000), 5_000);
        assert_ne!(rec.secret_hash, secret);
        assert_eq!(rec.secret_hash, crate::token::hash_secret(&secret));
        assert!(!rec.is_expired(5_999) && rec.is_expired(6_000));
        assert!(rec.allows(Read, R::Key("k")));
    }
}

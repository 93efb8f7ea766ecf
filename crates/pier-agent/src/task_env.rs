//! What every task is told about where it runs and how to reach what it needs: pure
//! functions from the task and its spec, so the rules are tested without Docker.

use std::collections::BTreeMap;

use pier_api::service::{ServiceSpec, TaskRecord};

/// The variable that carries the URL of a needed service: `api` → `API_URL`,
/// `user-db` → `USER_DB_URL`.
pub fn url_var(service: &str) -> String {
    let mut name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    name.push_str("_URL");
    name
}

/// The URL a task calls a service on: through its node's gateway, by name.
pub fn internal_url(service: &str) -> String {
    format!("http://{service}.internal")
}

/// The container's environment: `<NEED>_URL` for each of `needs`, then the service's own
/// `[env]` (which may point a need elsewhere), then the `PIER_*` variables, which always
/// win: they describe the task and nobody may fake them. `dns` is the node's resolver
/// address when the node has a pier network.
pub fn task_env(
    spec: &ServiceSpec,
    task: &TaskRecord,
    dns: Option<&str>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = spec
        .needs
        .iter()
        .map(|n| (url_var(n), internal_url(n)))
        .collect();
    env.extend(spec.env.clone());
    env.insert("PIER_SERVICE".into(), spec.name.clone());
    env.insert("PIER_REVISION".into(), task.revision.to_string());
    env.insert("PIER_TASK".into(), task.id.clone());
    env.insert("PIER_NODE".into(), task.node.clone());
    env.insert("PIER_ZONE".into(), task.zone.clone());
    if let Some(dns) = dns {
        env.insert("PIER_DNS".into(), dns.to_string());
    }
    env
}

/// The services of `needs` that have no healthy instance yet (in `needs` order).
pub fn unmet_needs(needs: &[String], healthy: impl Fn(&str) -> bool) -> Vec<String> {
    needs.iter().filter(|n| !healthy(n)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_api::service::{parse_service_file, DesiredState, Limits, StopPhase};

    fn task() -> TaskRecord {
        TaskRecord {
            id: "web-1-abc".into(),
            service: "web".into(),
            revision: 4,
            node: "n1".into(),
            zone: "a".into(),
            desired: DesiredState::Running,
            stop_phase: StopPhase::Active,
            stop_reason: None,
            created_at_ms: 0,
            lost_since_ms: None,
        }
    }

    #[test]
    fn variable_names_of_needs() {
        assert_eq!(url_var("api"), "API_URL");
        assert_eq!(url_var("user-db"), "USER_DB_URL");
        assert_eq!(internal_url("api"), "http://api.internal");
    }

    #[test]
    fn env_has_the_task_the_needs_and_the_users_overrides() {
        let spec = parse_service_file(
            "name = \"web\"\nimage = \"r/w:1\"\nneeds = [\"api\", \"db\"]\n[env]\nDB_URL = \"postgres://x\"\nPIER_NODE = \"fake\"\nGREETING = \"hi\"\n",
            Limits::default(),
        )
        .unwrap();
        let env = task_env(&spec, &task(), Some("172.20.0.1"));
        assert_eq!(env["API_URL"], "http://api.internal");
        assert_eq!(
            env["DB_URL"], "postgres://x",
            "the service's env wins over a need"
        );
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["PIER_SERVICE"], "web");
        assert_eq!(env["PIER_REVISION"], "4");
        assert_eq!(env["PIER_TASK"], "web-1-abc");
        assert_eq!(env["PIER_NODE"], "n1", "PIER_* cannot be overridden");
        assert_eq!(env["PIER_ZONE"], "a");
        assert_eq!(env["PIER_DNS"], "172.20.0.1");
        assert!(!task_env(&spec, &task(), None).contains_key("PIER_DNS"));
    }

    #[test]
    fn needs_wait_for_every_unhealthy_service() {
        let needs = vec!["api".to_string(), "db".to_string()];
        assert_eq!(unmet_needs(&needs, |_| false), needs);
        assert_eq!(unmet_needs(&needs, |n| n == "api"), vec!["db".to_string()]);
        assert!(unmet_needs(&needs, |_| true).is_empty());
        assert!(unmet_needs(&[], |_| false).is_empty());
    }
}

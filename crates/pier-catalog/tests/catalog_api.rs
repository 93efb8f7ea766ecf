//! The Rust API the orchestrator, agent and gateway use: registration, idempotence (no write
//! when nothing changes), check updates only on change, and `watch_passing`.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestServer};
use pier_catalog::{
    CatalogError, CheckDefinition, CheckKind, CheckRegistration, CheckStatus, InstanceRegistration,
    NodeRegistration,
};

fn ttl(status: Option<CheckStatus>) -> CheckRegistration {
    CheckRegistration {
        id: Some("alive".into()),
        name: Some("alive".into()),
        notes: String::new(),
        status,
        definition: CheckDefinition {
            kind: CheckKind::Ttl {
                ttl: Duration::from_secs(3600),
            },
            interval: None,
            timeout: None,
            deregister_critical_after: None,
            success_before_passing: 0,
            failures_before_critical: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_idempotent_and_watch_passing_follows_changes() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let catalog = s.catalog().clone();
    s.on(async move {
        let store = catalog.store().clone();
        let applied = || store.status().last_applied_index;
        let node = NodeRegistration {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            zone: Some("a".into()),
            monitored: false,
            ..Default::default()
        };
        catalog.register_node(&node).await.unwrap();
        let before = applied();
        catalog.register_node(&node).await.unwrap();
        assert_eq!(applied(), before, "unchanged node: no write");

        // Unknown node → NotFound; bad names → BadRequest.
        let mut reg = InstanceRegistration {
            id: "web-1".into(),
            service: "web".into(),
            node: "nope".into(),
            port: 80,
            checks: vec![ttl(None)],
            ..Default::default()
        };
        assert!(matches!(
            catalog.register_instance(&reg).await,
            Err(CatalogError::NotFound(_))
        ));
        reg.node = "n1".into();
        let mut bad = reg.clone();
        bad.service = "we b".into();
        assert!(matches!(
            catalog.register_instance(&bad).await,
            Err(CatalogError::BadRequest(_))
        ));

        let first = catalog.register_instance(&reg).await.unwrap();
        let after_first = applied();
        assert_eq!(
            catalog.register_instance(&reg).await.unwrap(),
            first,
            "same index for a no-op"
        );
        assert_eq!(
            applied(),
            after_first,
            "identical re-registration: no write"
        );

        // New checks start critical → not passing.
        let now = catalog.passing_instances("web").await.unwrap();
        assert!(now.value.is_empty());
        let index = now.index;

        // watch_passing blocks until the passing set changes.
        let watcher = {
            let catalog = catalog.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = catalog
                    .watch_passing("web", index, Duration::from_secs(20))
                    .await
                    .unwrap();
                (started.elapsed(), r)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!watcher.is_finished());
        assert!(catalog
            .update_check("n1", "alive", CheckStatus::Passing, Some("ok"))
            .await
            .unwrap());
        let (waited, passing) = watcher.await.unwrap();
        assert!(waited < Duration::from_secs(5));
        assert_eq!(passing.value.len(), 1);
        assert_eq!(passing.value[0].instance.id, "web-1");
        assert_eq!(
            passing.value[0].address(),
            "10.0.0.1",
            "node address when the instance has none"
        );
        assert!(passing.index > index);

        // Same status and output: no write.
        let before = applied();
        assert!(!catalog
            .update_check("n1", "alive", CheckStatus::Passing, Some("ok"))
            .await
            .unwrap());
        assert_eq!(applied(), before);

        // Re-registering with a changed port keeps the check's status.
        reg.port = 81;
        reg.checks = vec![ttl(Some(CheckStatus::Critical))];
        catalog.register_instance(&reg).await.unwrap();
        let passing = catalog.passing_instances("web").await.unwrap();
        assert_eq!(passing.value.len(), 1, "status survives re-registration");
        assert_eq!(passing.value[0].instance.port, 81);

        // Renaming the service of an instance ID moves it.
        reg.service = "www".into();
        catalog.register_instance(&reg).await.unwrap();
        assert!(catalog
            .passing_instances("web")
            .await
            .unwrap()
            .value
            .is_empty());
        let www = catalog
            .health_service("www", &Default::default(), &Default::default())
            .await
            .unwrap();
        assert_eq!(www.value.len(), 1);

        assert!(catalog.deregister_instance("n1", "web-1").await.unwrap());
        assert!(!catalog.deregister_instance("n1", "web-1").await.unwrap());
        assert!(matches!(
            catalog
                .update_check("n1", "alive", CheckStatus::Passing, None)
                .await,
            Err(CatalogError::NotFound(_))
        ));
        catalog.deregister_node("n1").await.unwrap();
        assert!(catalog
            .nodes(&Default::default())
            .await
            .unwrap()
            .value
            .iter()
            .all(|n| n.name != "n1"));
    })
    .await;
}

//! The Docker driver against the real engine: create with labels, dynamic host ports and
//! limits; start; logs; exec; stop with the stop signal; adoption by labels; isolation
//! between agents on one engine.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use pier_agent::docker::{ContainerSpec, DockerDriver};
use pier_testkit::docker::{ImageGuard, RunGuard};
use pier_testkit::images::{build_httpd_image, HttpdVariant};

fn spec(task: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        task_id: task.into(),
        service: "hello".into(),
        revision: 1,
        image: image.into(),
        entrypoint: None,
        cmd: None,
        env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        ports: vec![8080],
        host_ip: "127.0.0.1".into(),
        cpu_millis: 250,
        memory_mb: 64,
        stop_signal: "SIGTERM".into(),
        network: None,
        dns: vec![],
        user: None,
        read_only_root: false,
        cap_drop: vec![],
        binds: vec![],
        tmpfs: BTreeMap::new(),
    }
}

#[tokio::test]
async fn lifecycle_adoption_and_isolation() {
    let image = "pier-test/driver:v1";
    build_httpd_image(image, HttpdVariant::Healthy);
    let _images = ImageGuard::new(image);
    let guard = RunGuard::new_run();
    let labels = BTreeMap::from([
        ("pier.test".to_string(), "1".to_string()),
        (guard.label.clone(), guard.value.clone()),
    ]);
    let driver = DockerDriver::connect("node-a", labels.clone())
        .await
        .expect("docker");
    let other = DockerDriver::connect("node-b", labels.clone())
        .await
        .expect("docker");
    let (cpu, mem) = driver.capacity().await.unwrap();
    assert!(cpu >= 1000 && mem > 0);
    assert!(driver.image_present(image).await.unwrap());
    assert!(!driver.image_present("pier-test/absent:nope").await.unwrap());

    let task = format!("t-{}", guard.value);
    let id = driver.create(&spec(&task, image)).await.unwrap();
    // Creating the same task again returns the same container instead of a duplicate.
    assert_eq!(driver.create(&spec(&task, image)).await.unwrap(), id);
    driver.start(&id).await.unwrap();
    let info = driver.inspect(&id).await.unwrap().expect("ours");
    assert!(info.running);
    assert_eq!(info.task_id, task);
    let host_port = *info.host_ports.get(&8080).expect("a host port for 8080");
    assert_ne!(host_port, 8080);

    // The published port accepts before httpd listens; retry briefly.
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{host_port}/")).await {
            body = resp.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("pier-test/driver:v1"));

    // Limits and labels as the engine sees them.
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{index .Config.Labels \"pier.node\"}} {{index .Config.Labels \"pier.test\"}}", &id])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("250000000 {} node-a 1", 64 * 1024 * 1024)
    );

    // Only the owner sees (adopts) it.
    let mine = driver.list_managed().await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, id);
    assert!(other.list_managed().await.unwrap().is_empty());
    assert!(other.inspect(&id).await.unwrap().is_none());

    // A fresh driver (an agent restart) adopts it by labels.
    let restarted = DockerDriver::connect("node-a", labels).await.unwrap();
    let adopted = restarted.list_managed().await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].host_ports.get(&8080), Some(&host_port));

    // exec for command health checks.
    let ok = driver
        .exec(
            &id,
            &["/bin/busybox".into(), "true".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ok, Some(0));
    let bad = driver
        .exec(
            &id,
            &["/bin/busybox".into(), "false".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(bad, Some(1));

    // Events: stopping produces a die event for our container.
    let mut events = Box::pin(driver.events());
    let started = std::time::Instant::now();
    driver.stop(&id, 2_000).await.unwrap();
    // httpd exits on SIGTERM well before the timeout.
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "stop took {:?}",
        started.elapsed()
    );
    let die = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = events.next().await {
            let ev = ev.unwrap();
            if ev.action == "die" {
                return ev;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("a die event");
    assert_eq!(die.task_id.as_deref(), Some(task.as_str()));
    let stopped = driver.inspect(&id).await.unwrap().unwrap();
    assert!(!stopped.running);
    assert!(stopped.exit_code.is_some());

    // Logs of a stopped container are still readable.
    let logs: Vec<_> = driver.logs(&id, false, Some(10)).collect().await;
    assert!(logs.iter().all(|l| l.is_ok()));

    driver.remove(&id).await.unwrap();
    assert!(driver.inspect(&id).await.unwrap().is_none());
    assert!(guard.containers(true).is_empty());
}

#[tokio::test]
async fn stop_kills_after_timeout_when_signal_is_ignored() {
    let image = "pier-test/driver-stubborn:v1";
    build_httpd_image(image, HttpdVariant::Healthy);
    let _images = ImageGuard::new(image);
    let guard = RunGuard::new_run();
    let labels = BTreeMap::from([
        ("pier.test".to_string(), "1".to_string()),
        (guard.label.clone(), guard.value.clone()),
    ]);
    let driver = DockerDriver::connect("node-s", labels).await.unwrap();
    let mut s = spec(&format!("s-{}", guard.value), image);
    // SIGWINCH's default action is to ignore it: only the SIGKILL after the timeout ends it.
    s.cmd = Some(vec!["/bin/busybox".into(), "sleep".into(), "60".into()]);
    s.stop_signal = "SIGWINCH".into();
    s.ports = vec![];
    let id = driver.create(&s).await.unwrap();
    driver.start(&id).await.unwrap();
    let started = std::time::Instant::now();
    driver.stop(&id, 1_000).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let info = driver.inspect(&id).await.unwrap().unwrap();
    assert_eq!(info.exit_code, Some(137));
}

#[tokio::test]
async fn pulling_a_missing_image_is_a_specific_error() {
    let driver = DockerDriver::connect(
        "node-p",
        BTreeMap::from([("pier.test".to_string(), "1".to_string())]),
    )
    .await
    .unwrap();
    // Nothing listens on port 1: the engine cannot reach that registry.
    let err = driver.pull("127.0.0.1:1/nope:v1").await.unwrap_err();
    assert!(
        matches!(
            err,
            pier_agent::docker::DockerError::Pull { .. }
                | pier_agent::docker::DockerError::ImageNotFound { .. }
        ),
        "{err}"
    );
}

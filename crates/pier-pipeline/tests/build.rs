//! Build and push through the real Docker engine into a real pier registry.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{unique_name, TestRegistry};
use pier_pipeline::build::{build_image, push_image, BuildError, BuildSpec};
use pier_pipeline::definition::RepoSource;
use pier_pipeline::git::GitRepos;
use pier_pipeline::log_sink::{collect, LogSink};
use pier_testkit::docker::{docker_available, ImageGuard};
use pier_testkit::git::busybox_site_repo;

fn docker() -> bollard::Docker {
    docker_available();
    bollard::Docker::connect_with_local_defaults().unwrap()
}

#[tokio::test]
async fn builds_the_commit_and_pushes_it() {
    let docker = docker();
    let registry = TestRegistry::start().await;
    let name = unique_name("pipebuild");
    let repo = busybox_site_repo(&name, "v1\n");
    let cache = tempfile::tempdir().unwrap();
    let open = GitRepos::new(cache.path())
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    let head = open.branch_head("main").unwrap();
    let image = format!("{}/{name}:{}", registry.host(), &head.id[..12]);
    let _guard = ImageGuard::new(&image);
    let mut args = BTreeMap::new();
    args.insert("UNUSED_ARG".to_string(), "1".to_string());
    let (log, rx) = LogSink::channel();
    let id = build_image(
        &docker,
        BuildSpec {
            image: &image,
            context_tar: open.context_tar(&head.id, "Dockerfile").unwrap(),
            dockerfile: "Dockerfile",
            build_args: &args,
            labels: HashMap::from([("pier.test".to_string(), "1".to_string())]),
        },
        &log,
    )
    .await
    .unwrap();
    assert!(!id.is_empty());
    push_image(&docker, &image, None, &log).await.unwrap();
    drop(log);
    let text = collect(rx).await;
    assert!(text.contains("COPY www /www"), "{text}");
    assert_eq!(registry.tags(&name).await, vec![head.id[..12].to_string()]);
}

#[tokio::test]
async fn a_broken_dockerfile_fails_with_the_builders_error_and_pushes_nothing() {
    let docker = docker();
    let registry = TestRegistry::start().await;
    let name = unique_name("pipebroken");
    let repo = busybox_site_repo(&name, "v1\n");
    repo.write("Dockerfile", "FROM scratch\nCOPY no-such-file /x\n");
    let commit = repo.commit("broken");
    let cache = tempfile::tempdir().unwrap();
    let open = GitRepos::new(cache.path())
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    let image = format!("{}/{name}:{}", registry.host(), &commit[..12]);
    let _guard = ImageGuard::new(&image);
    let (log, rx) = LogSink::channel();
    let err = build_image(
        &docker,
        BuildSpec {
            image: &image,
            context_tar: open.context_tar(&commit, "Dockerfile").unwrap(),
            dockerfile: "Dockerfile",
            build_args: &BTreeMap::new(),
            labels: HashMap::new(),
        },
        &log,
    )
    .await
    .unwrap_err();
    drop(log);
    let text = collect(rx).await;
    let BuildError::Build(msg) = &err else {
        panic!("expected a build error, got {err:?}")
    };
    assert!(msg.contains("no-such-file"), "{msg}");
    assert!(text.contains("no-such-file"), "{text}");
    assert!(registry.tags(&name).await.is_empty());

    // A Dockerfile that is not in the context.
    let (log, _rx) = LogSink::channel();
    let err = build_image(
        &docker,
        BuildSpec {
            image: &image,
            context_tar: open.context_tar(&commit, "Dockerfile").unwrap(),
            dockerfile: "docker/Missing.Dockerfile",
            build_args: &BTreeMap::new(),
            labels: HashMap::new(),
        },
        &log,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BuildError::Build(_)), "{err:?}");
}

#[tokio::test]
async fn push_to_an_unreachable_registry_fails() {
    let docker = docker();
    let name = unique_name("pipepush");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let image = format!("127.0.0.1:{port}/{name}:v1");
    let _img = pier_testkit::docker::busybox_image().build(&image);
    let (log, _rx) = LogSink::channel();
    let err = push_image(&docker, &image, None, &log).await.unwrap_err();
    assert!(matches!(err, BuildError::Push(_)), "{err:?}");
}

//! Bad input is refused at `pipeline create` with the exact reason, and nothing is created.

mod pipeline_common;

use pier_testkit::git::busybox_site_repo;
use pipeline_common::Dev;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_are_refused_with_the_reason() {
    let dev = Dev::start(&["--no-agent"]).await;
    let good = busybox_site_repo("web", "v1\n");
    let good_path = good.path().to_str().unwrap().to_string();

    let refused = |args: &[&str], expect: &str| {
        let out = dev.pier(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "pier {args:?} was accepted");
        assert!(
            err.contains(expect),
            "pier {args:?}: expected {expect:?} in {err}"
        );
    };

    refused(
        &["pipeline", "create", "web", "--repo", "/nonexistent/repo"],
        "/nonexistent/repo cannot be opened",
    );
    let not_git = tempfile::tempdir().unwrap();
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            not_git.path().to_str().unwrap(),
        ],
        "cannot be opened",
    );
    refused(
        &[
            "pipeline", "create", "web", "--repo", &good_path, "--branch", "release",
        ],
        "branch \"release\" does not exist",
    );
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            &good_path,
            "--file",
            "deploy/web.toml",
        ],
        "deploy/web.toml does not exist",
    );
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            &good_path,
            "--dockerfile",
            "Containerfile",
        ],
        "Containerfile does not exist",
    );
    refused(
        &["pipeline", "create", "Web!", "--repo", &good_path],
        "pipeline name",
    );
    refused(
        &[
            "pipeline", "create", "web", "--repo", &good_path, "--poll", "soon",
        ],
        "poll interval",
    );
    refused(
        &["pipeline", "create", "web", "--repo", "ssh://host/repo.git"],
        "not supported",
    );
    refused(
        &[
            "pipeline", "create", "web", "--repo", &good_path, "--branch", "a..b",
        ],
        "valid git branch",
    );
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            &good_path,
            "--file",
            "../x.toml",
        ],
        "inside the repository",
    );

    // An invalid service file, with the line of the mistake.
    let bad = busybox_site_repo("web", "v1\n");
    bad.write("pier.toml", "name = \"web\"\nport = 99999\n");
    bad.commit("bad port");
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            bad.path().to_str().unwrap(),
        ],
        "service file pier.toml is invalid: line 2",
    );
    bad.write(
        "pier.toml",
        "name = \"web\"\nport = 8080\ncolour = \"blue\"\n",
    );
    bad.commit("unknown field");
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            bad.path().to_str().unwrap(),
        ],
        "colour",
    );

    // An http remote that does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    refused(
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            &format!("http://127.0.0.1:{port}/web.git"),
        ],
        "fetching",
    );

    // Nothing was created by any of these.
    let ls = dev.pier_ok(&["pipeline", "ls", "--json"]);
    assert_eq!(ls.trim(), "[]");

    // Unknown pipelines and runs.
    refused(&["pipeline", "runs", "nope"], "no pipeline named \"nope\"");
    refused(&["pipeline", "run", "nope"], "no pipeline named \"nope\"");
    refused(&["pipeline", "logs", "nope/3"], "has no run 3");

    // A second pipeline with a taken name is refused (the first is accepted).
    dev.pier_ok(&[
        "pipeline", "create", "web", "--repo", &good_path, "--poll", "off",
    ]);
    refused(
        &["pipeline", "create", "web", "--repo", &good_path],
        "already exists",
    );
    refused(
        &["pipeline", "run", "web", "--commit", "0123456789abcdef"],
        "does not exist",
    );
    dev.pier_ok(&["pipeline", "rm", "web"]);
    assert_eq!(dev.pier_ok(&["pipeline", "ls", "--json"]).trim(), "[]");

    // A repository that goes away after creation: the poll error is shown, then cleared.
    let moving = busybox_site_repo("moving", "v1\n");
    let path = moving.path().to_path_buf();
    dev.pier_ok(&[
        "pipeline",
        "create",
        "moving",
        "--repo",
        path.to_str().unwrap(),
        "--poll",
        "1s",
    ]);
    let away = path.with_extension("away");
    std::fs::rename(&path, &away).unwrap();
    let poll_error = |dev: &Dev| {
        let ls = pipeline_common::json_of(&dev.pier_ok(&["pipeline", "ls", "--json"]));
        ls[0]["poll_error"].as_str().map(str::to_string)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let err = loop {
        if let Some(e) = poll_error(&dev) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the poll error never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(err.contains("cannot be opened"), "{err}");
    assert!(dev.pier_ok(&["pipeline", "ls"]).contains("polling fails"));
    std::fs::rename(&away, &path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while poll_error(&dev).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll error was never cleared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

//! gix against real repositories made with the git CLI: local paths, file:// and smart HTTP.

mod common;

use std::io::Read;

use common::GitHttpServer;
use pier_pipeline::definition::{parse_repo, RepoSource};
use pier_pipeline::git::{GitError, GitRepos};
use pier_testkit::git::TestRepo;

fn sample_repo() -> TestRepo {
    let r = TestRepo::new();
    r.write("Dockerfile", "FROM scratch\nCOPY www /www\n");
    r.write("pier.toml", "name = \"hello\"\nport = 8080\n");
    r.write("www/index.html", "v1\n");
    r.write("bin/run.sh", "#!/bin/sh\necho hi\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        r.path().join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("index.html", r.path().join("www/home.html")).unwrap();
    r.commit("first");
    r
}

#[test]
fn local_path_and_file_url_follow_the_branch() {
    let repo = sample_repo();
    let cache = tempfile::tempdir().unwrap();
    let git = GitRepos::new(cache.path());
    for source in [
        RepoSource::Local(repo.path().to_path_buf()),
        parse_repo(&format!("file://{}", repo.path().display())).unwrap(),
    ] {
        let open = git.open(&source, "main").unwrap();
        let head = open.branch_head("main").unwrap();
        assert_eq!(head.id, repo.head());
        assert_eq!(head.subject, "first");
    }
    let first = repo.head();
    repo.write("www/index.html", "v2\n");
    let second = repo.commit("second page\n\nwith a body");
    let open = git
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    let head = open.branch_head("main").unwrap();
    assert_eq!(head.id, second);
    assert_eq!(head.subject, "second page");
    // Older commits by full id and by prefix.
    assert_eq!(open.find_commit(&first).unwrap().id, first);
    assert_eq!(open.find_commit(&first[..8]).unwrap().id, first);
    assert!(matches!(
        open.find_commit("deadbeefdeadbeef"),
        Err(GitError::NoCommit { .. })
    ));
    assert!(matches!(
        open.find_commit("HEAD"),
        Err(GitError::NoCommit { .. })
    ));
    // Files of a given commit.
    assert_eq!(open.read_file(&first, "www/index.html").unwrap(), b"v1\n");
    assert_eq!(open.read_file(&second, "www/index.html").unwrap(), b"v2\n");
    assert!(matches!(
        open.read_file(&second, "nope.toml"),
        Err(GitError::NoFile { .. })
    ));
    assert!(matches!(
        open.read_file(&second, "www"),
        Err(GitError::NotAFile { .. })
    ));
}

#[test]
fn bad_repositories_and_branches() {
    let cache = tempfile::tempdir().unwrap();
    let git = GitRepos::new(cache.path());
    let missing = git.open(&RepoSource::Local("/nonexistent/pier-repo".into()), "main");
    assert!(
        matches!(missing, Err(GitError::Open { .. })),
        "{:?}",
        missing.err()
    );
    let not_git = tempfile::tempdir().unwrap();
    let err = git
        .open(&RepoSource::Local(not_git.path().to_path_buf()), "main")
        .err()
        .unwrap();
    assert!(matches!(err, GitError::Open { .. }), "{err}");

    let repo = sample_repo();
    let open = git
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    let err = open.branch_head("release").unwrap_err();
    assert_eq!(
        err,
        GitError::NoBranch {
            repo: repo.path().display().to_string(),
            branch: "release".into()
        }
    );
}

#[test]
fn context_tar_holds_the_tree() {
    let repo = sample_repo();
    let cache = tempfile::tempdir().unwrap();
    let git = GitRepos::new(cache.path());
    let open = git
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    // An untracked file is not part of the commit.
    repo.write("untracked.txt", "x");
    let tar_bytes = open.context_tar(&repo.head(), "Dockerfile").unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mode = entry.header().mode().unwrap();
        let kind = entry.header().entry_type();
        let mut content = String::new();
        if kind.is_file() {
            entry.read_to_string(&mut content).unwrap();
        }
        let link = entry.link_name().unwrap().map(|l| l.display().to_string());
        seen.push((path, mode, kind, content, link));
    }
    let find = |p: &str| {
        seen.iter()
            .find(|e| e.0.trim_end_matches('/') == p)
            .unwrap_or_else(|| panic!("{p} missing from {seen:?}"))
    };
    assert_eq!(find("Dockerfile").3, "FROM scratch\nCOPY www /www\n");
    assert_eq!(find("bin/run.sh").1, 0o755);
    assert_eq!(find("www/index.html").1, 0o644);
    assert!(find("www").2.is_dir());
    let link = find("www/home.html");
    assert!(link.2.is_symlink());
    assert_eq!(link.4.as_deref(), Some("index.html"));
    assert!(!seen.iter().any(|e| e.0.contains("untracked")));
}

#[test]
fn http_remote_is_fetched_into_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let work = sample_repo();
    // A bare copy under the served root, updated by pushes as a forge would be.
    let bare = work.bare_clone(root.path(), "hello.git");
    let server = GitHttpServer::start(root.path());
    let url = server.url("hello.git");
    let cache = tempfile::tempdir().unwrap();
    let git = GitRepos::new(cache.path());
    let source = RepoSource::Remote(url.clone());

    let open = git.open(&source, "main").unwrap();
    let head = open.branch_head("main").unwrap();
    assert_eq!(head.id, work.head());
    assert_eq!(
        open.read_file(&head.id, "pier.toml").unwrap(),
        b"name = \"hello\"\nport = 8080\n"
    );

    work.write("www/index.html", "v2\n");
    let second = work.commit("second");
    work.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    let open = git.open(&source, "main").unwrap();
    assert_eq!(open.branch_head("main").unwrap().id, second);
    let tar_bytes = open.context_tar(&second, "Dockerfile").unwrap();
    assert!(!tar_bytes.is_empty());

    let err = git.open(&source, "nope").err().unwrap();
    assert!(matches!(err, GitError::NoBranch { .. }), "{err}");
    let err = git
        .open(&RepoSource::Remote(server.url("missing.git")), "main")
        .err()
        .unwrap();
    assert!(matches!(err, GitError::Fetch { .. }), "{err}");
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = git
        .open(
            &RepoSource::Remote(format!("http://127.0.0.1:{port}/x.git")),
            "main",
        )
        .err()
        .unwrap();
    assert!(matches!(err, GitError::Fetch { .. }), "{err}");
}

#[test]
fn dockerignore_is_applied_to_the_context() {
    let repo = sample_repo();
    repo.write(
        ".dockerignore",
        "*.md\nsecrets\n!secrets/public.txt\nDockerfile\n",
    );
    repo.write("NOTES.md", "private notes");
    repo.write("secrets/key.pem", "KEY");
    repo.write("secrets/public.txt", "public");
    let commit = repo.commit("with .dockerignore");
    let cache = tempfile::tempdir().unwrap();
    let open = GitRepos::new(cache.path())
        .open(&RepoSource::Local(repo.path().to_path_buf()), "main")
        .unwrap();
    let tar_bytes = open.context_tar(&commit, "Dockerfile").unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let paths: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    let has = |p: &str| paths.iter().any(|x| x.trim_end_matches('/') == p);
    assert!(!has("NOTES.md"), "{paths:?}");
    assert!(!has("secrets/key.pem"), "{paths:?}");
    assert!(has("secrets/public.txt"), "{paths:?}");
    assert!(
        has("Dockerfile"),
        "the Dockerfile is always sent: {paths:?}"
    );
    assert!(has(".dockerignore"), "{paths:?}");
    assert!(has("www/index.html"), "{paths:?}");
}

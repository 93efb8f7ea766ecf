//! https remotes: gix fetches over TLS, trusting the system's CA store (`SSL_CERT_FILE`
//! overrides it, as for git and curl), and refuses a server whose certificate it cannot verify.

mod common;

use common::{GitHttpServer, TestPki};
use pier_pipeline::definition::RepoSource;
use pier_pipeline::git::{GitError, GitRepos};
use pier_testkit::git::TestRepo;

#[test]
fn https_remote_is_fetched_when_its_ca_is_trusted_and_refused_when_not() {
    let work = TestRepo::new();
    work.write("Dockerfile", "FROM scratch\n");
    work.write("pier.toml", "name = \"hello\"\nport = 8080\n");
    let first = work.commit("first");
    let root = tempfile::tempdir().unwrap();
    let bare = work.bare_clone(root.path(), "hello.git");
    let pki = TestPki::new();
    let server = GitHttpServer::start_tls(root.path(), &pki);
    let source = RepoSource::Remote(server.url("hello.git"));
    let cache = tempfile::tempdir().unwrap();
    let git = GitRepos::new(cache.path());

    // A CA store without the server's CA: the certificate cannot be verified.
    let other = TestPki::new();
    std::env::set_var("SSL_CERT_FILE", other.ca_file());
    let err = git
        .open(&source, "main")
        .err()
        .expect("untrusted server refused");
    assert!(matches!(err, GitError::Fetch { .. }), "{err}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("issuer"),
        "the error does not say the certificate is the problem: {err}"
    );

    // Trusting the CA: fetched, and a later push is seen.
    std::env::set_var("SSL_CERT_FILE", pki.ca_file());
    let open = git.open(&source, "main").unwrap();
    assert_eq!(open.branch_head("main").unwrap().id, first);
    work.write("pier.toml", "name = \"hello\"\nport = 8081\n");
    let second = work.commit("second");
    work.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    let open = git.open(&source, "main").unwrap();
    assert_eq!(open.branch_head("main").unwrap().id, second);
    assert_eq!(
        open.read_file(&second, "pier.toml").unwrap(),
        b"name = \"hello\"\nport = 8081\n"
    );
}

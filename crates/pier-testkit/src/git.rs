//! Real git repositories made with the git CLI, for the pipeline tests of `pier-pipeline`
//! and `pier`, and the busybox httpd site they build and deploy.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git work tree in a temp dir, on branch `main`.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir for a test repository");
        let r = TestRepo { dir };
        r.git(&["init", "-q", "-b", "main"]);
        r.git(&["config", "user.email", "test@pier.invalid"]);
        r.git(&["config", "user.name", "Pier Test"]);
        r.git(&["config", "commit.gpgsign", "false"]);
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("git")
                .args(args)
                .current_dir(self.path())
                .env("GIT_CONFIG_NOSYSTEM", "1"),
            "the git CLI must be installed for these tests",
        );
        String::from_utf8_lossy(&out).trim().to_string()
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create a directory in the test repository");
        }
        std::fs::write(p, content).expect("write a file in the test repository");
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// A bare clone at `root/name`, to serve as a forge would; push to it to publish commits.
    pub fn bare_clone(&self, root: &Path, name: &str) -> PathBuf {
        let bare = root.join(name);
        let status = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(self.path())
            .arg(&bare)
            .status()
            .expect("the git CLI must be installed for these tests");
        assert!(status.success(), "git clone --bare");
        bare
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        TestRepo::new()
    }
}

/// Runs `cmd` to completion and returns its stdout; panics with `missing` when it cannot be
/// started and with its arguments and stderr when it fails.
pub fn run_ok(cmd: &mut Command, missing: &str) -> Vec<u8> {
    let out = cmd.output().expect(missing);
    let args: Vec<_> = cmd.get_args().collect();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        cmd.get_program().to_string_lossy(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The service file of the busybox site, checking `health_path`.
pub fn busybox_service_file(service: &str, health_path: &str) -> String {
    format!(
        "name = \"{service}\"\ncount = 2\nport = 8080\n\n[health]\nhttp = \"{health_path}\"\ninterval = \"1s\"\n"
    )
}

/// A repository holding the busybox httpd example: Dockerfile, www/index.html = `page`, and a
/// pier.toml for `service` checking `/index.html`; committed once.
pub fn busybox_site_repo(service: &str, page: &str) -> TestRepo {
    let r = TestRepo::new();
    std::fs::copy(crate::docker::static_busybox(), r.path().join("busybox"))
        .expect("copy busybox into the test repository");
    r.write(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]\n",
    );
    r.write("www/index.html", page);
    r.write("pier.toml", busybox_service_file(service, "/index.html"));
    r.commit("site v1");
    r
}
